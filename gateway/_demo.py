"""``gateway demo``: three small upstream services and the gateway on the demo config.

The services are plain ASGI apps on hypercorn's trio worker, on free loopback ports:
``users`` (fast; greets in the language the request asks for, so forwarding
``Accept-Language`` shows), ``orders`` (answers 503 about one call in four) and
``recommendations`` (takes 50-320 ms, so its 250 ms timeout cuts it now and then).

The config is the packaged ``gateway/demo.yaml`` (``config/demo.yaml`` in a checkout is a
link to it), or the user's own file (``gateway demo --config FILE``); either way the
services' addresses are in ``DEMO_USERS_URL``, ``DEMO_ORDERS_URL`` and
``DEMO_RECOMMENDATIONS_URL`` for ``${...}`` in the config.
"""

from __future__ import annotations

import os
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import hypercorn.config
import jwt as pyjwt
import orjson
import trio

from ._app import create_app
from ._config.compile import load_config
from ._config.plan import GatewayPlan
from ._listen import check_binds
from ._server import hypercorn_config, serve_app, wait_for_signal

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

USERS = {
    str(i): {
        "id": i,
        "name": name,
        "email": f"{name.split()[0].lower()}@example.com",
        "tier": tier,
        "address": {"city": city, "zip": f"{10000 + i * 137}"},
    }
    for i, (name, tier, city) in enumerate(
        [
            ("Ada Lovelace", "gold", "London"),
            ("Grace Hopper", "platinum", "New York"),
            ("Alan Turing", "silver", "Manchester"),
            ("Edsger Dijkstra", "gold", "Rotterdam"),
            ("Barbara Liskov", "silver", "Boston"),
        ],
        start=1,
    )
}
GREETINGS = {"en": "Hello", "de": "Guten Tag", "fr": "Bonjour"}
"""The users service's languages; any other request gets English."""

PRODUCTS = ["trio mug", "nursery poster", "cancel-scope socks", "deadline clock", "h11 t-shirt"]


def demo_config_path() -> str:
    """The packaged demo config (inside the package, so that it ships with a pip install)."""
    return str(resources.files("gateway").joinpath("demo.yaml"))


def preferred_language(query: dict[str, list[str]], accept_language: str) -> str:
    """The language of :data:`GREETINGS` a request asks for: ``?lang=`` first, else the
    ``Accept-Language`` range with the highest weight (RFC 9110 section 12.5.4; a range
    matches by its primary tag, ``de-CH`` is ``de``), else ``en``."""
    lang = query.get("lang", [""])[0].lower()
    if lang in GREETINGS:
        return lang
    best, best_q = "en", 0.0
    for item in accept_language.split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        if primary in GREETINGS and q > best_q:
            best, best_q = primary, q
    return best


async def _send_json(send: Send, status: int, body: object) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class DemoService:
    """A tiny JSON service; implements lifespan as hypercorn's trio worker requires."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = parse_qs(scope["query_string"].decode())
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        status, body = await getattr(self, f"_{self.name}")(path, query, headers)
        await _send_json(send, status, body)

    async def _users(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, object]:
        if path.endswith("/loyalty"):
            user_id = path.removeprefix("/users/").removesuffix("/loyalty")
            if user_id not in USERS:
                return 404, {"error": "no such user"}
            return 200, {"points": 1200 + int(user_id) * 311, "since": 2019 + int(user_id) % 5}
        user = USERS.get(path.removeprefix("/users/"))
        if user is None:
            return 404, {"error": "no such user"}
        greeting = GREETINGS[preferred_language(query, headers.get("accept-language", ""))]
        first_name = str(user["name"]).split()[0]
        return 200, {"data": {**user, "greeting": f"{greeting}, {first_name}!"}}

    async def _orders(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, object]:
        if path.startswith("/tracking/"):
            await trio.sleep(self.rng.uniform(0.005, 0.03))
            order = path.removeprefix("/tracking/")
            return 200, {"order": order, "carrier": "trio-express", "eta_days": len(order) % 4 + 1}
        if self.rng.random() < 0.25:
            return 503, {"error": "orders database is busy"}
        user = query.get("user", ["0"])[0]
        limit = int(query.get("limit", ["5"])[0])
        seed = sum(map(ord, user))
        items = [
            {
                "id": f"o-{seed}-{n}",
                "total": round(9.5 + (seed * n) % 90, 2),
                "status": "shipped",
                "warehouse": "w1",
            }
            for n in range(1, 1 + (seed % 4) + 1)
        ][:limit]
        return 200, {"items": items, "count": len(items)}

    async def _recommendations(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, object]:
        await trio.sleep(self.rng.uniform(0.05, 0.32))
        user = path.removeprefix("/recommendations/")
        start = (sum(map(ord, user)) + len(query.get("tier", [""])[0])) % len(PRODUCTS)
        return 200, {"products": [PRODUCTS[(start + k) % len(PRODUCTS)] for k in range(3)]}


SERVICES = ("users", "orders", "recommendations")


def _upstream_config() -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.backlog = 1024
    config.accesslog = None
    config.errorlog = None
    config.include_server_header = False
    return config


async def run_demo(
    bind: str | None = None,
    *,
    config_path: str | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] = wait_for_signal,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start the services and the gateway; report the gateway's URL; stop on the trigger."""
    rng = random.Random()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        env = dict(os.environ)
        for name in SERVICES:
            binds = await nursery.start(
                partial(
                    serve_app,
                    DemoService(name, rng),  # type: ignore[arg-type]
                    _upstream_config(),
                    shutdown_trigger=stop.wait,
                )
            )
            env[f"DEMO_{name.upper()}_URL"] = binds[0]
        # a secret of this run: the printed token is the only way in
        env.setdefault(DEMO_JWT_SECRET, secrets.token_urlsafe(32))
        plan: GatewayPlan = load_config(config_path or demo_config_path(), env)
        for warning in plan.warnings:
            print(warning, file=sys.stderr)
        config = hypercorn_config(plan, bind=bind)
        check_binds(config.bind)  # one line, not hypercorn's traceback, for a busy port
        binds = await nursery.start(
            partial(serve_app, create_app(plan), config, shutdown_trigger=stop.wait)
        )
        url = binds[0]
        task_status.started(url)
        banner = (
            demo_banner(url, demo_token(env[DEMO_JWT_SECRET]))
            if config_path is None
            else config_banner(url, plan)
        )
        print(banner, flush=True)
        await shutdown_trigger()
        stop.set()


DEMO_JWT_SECRET = "DEMO_JWT_SECRET"
DEMO_TOKEN_LIFETIME_S = 3600


def demo_token(secret: str, now_s: float | None = None) -> str:
    """A token the demo's ``demo_users`` policy accepts: user 1, valid for an hour
    (HS256, RFC 7519)."""
    issued = int(time.time() if now_s is None else now_s)
    claims = {
        "sub": "1",
        "iss": "gateway-demo",
        "aud": "demo",
        "iat": issued,
        "exp": issued + DEMO_TOKEN_LIFETIME_S,
    }
    return pyjwt.encode(claims, secret, algorithm="HS256")


def demo_banner(url: str, token: str) -> str:
    return "\n".join(
        [
            f"gateway demo: serving {url}  (Ctrl+C to stop)",
            "",
            "Try:",
            f"  curl -i {url}/api/me -H 'Authorization: Bearer {token}'"
            "   # protected: the token's user (valid 1 h)",
            f"  curl -i {url}/api/me   # no token: 401 with WWW-Authenticate: Bearer",
            f"  curl -i {url}/api/users/1/dashboard",
            f"  curl -i '{url}/api/users/1/dashboard?include=loyalty'   # a conditional backend",
            f"  curl -i {url}/api/users/1/dashboard -H 'Accept-Language: de'"
            "   # forwarded: the greeting in German",
            f"  curl -i {url}/api/users/1            # passthrough: the upstream's body, unfiltered",
            f"  curl -i {url}/api/users/1/orders     # for_each into each order + debug timings;"
            " 502 now and then",
            f"  curl -i {url}/api/users/42/dashboard # required backend 404: 502",
            f"  curl -i {url}/api/users/..%2Fadmin/dashboard  # refused: 400",
            f"  curl -i {url}/__gateway/health",
        ]
    )


def config_banner(url: str, plan: GatewayPlan) -> str:
    """``gateway demo --config FILE``: the user's endpoints, on the demo's services."""
    services = ", ".join(f"DEMO_{name.upper()}_URL" for name in SERVICES)
    return "\n".join(
        [
            f"gateway demo: serving {url} from {plan.file}  (Ctrl+C to stop)",
            f"  the demo services are at ${{{services.replace(', ', '}, ${')}}}",
            *(f"  {ep.method} {url}{ep.path}" for ep in plan.endpoints),
        ]
    )
