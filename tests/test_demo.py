"""`gateway demo`: one config file, `--config FILE`, and examples that show what they say."""

from __future__ import annotations

import itertools
import re
import shlex
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from conftest import start_gateway_process

from gateway._demo import (
    USERS,
    demo_banner,
    demo_config_path,
    demo_token,
    preferred_language,
    run_demo,
)

ROOT = Path(__file__).parent.parent


def test_the_checkouts_demo_config_is_the_file_the_demo_serves() -> None:
    """Editing config/demo.yaml changes what `gateway demo` serves: it is a link to the
    packaged gateway/demo.yaml (which must stay in the package for pip installs)."""
    assert (ROOT / "config" / "demo.yaml").resolve() == Path(demo_config_path()).resolve()


def test_preferred_language_takes_the_query_then_the_highest_weight() -> None:
    assert preferred_language({}, "") == "en"
    assert preferred_language({}, "de") == "de"
    assert preferred_language({}, "de-CH, fr;q=0.5") == "de"
    assert preferred_language({}, "fr;q=0.5, de;q=0.9, en;q=0.1") == "de"
    assert preferred_language({}, "ja, fr;q=0.2") == "fr"
    assert preferred_language({}, "de;q=x, fr;q=0.3") == "fr"
    assert preferred_language({"lang": ["FR"]}, "de") == "fr"
    assert preferred_language({"lang": ["xx"]}, "de") == "de"


def test_the_demo_data_has_no_secret_looking_field() -> None:
    """The passthrough example returns the users service's body unfiltered: nothing in it
    may look like something a gateway should have kept back."""
    for user in USERS.values():
        for key in user:
            assert not re.search(r"password|secret|token|hash", key), key


SECRET = "a-test-secret-of-at-least-32-bytes!"


def _examples(url: str) -> list[tuple[str, dict[str, str], str]]:
    """The banner's curl commands as (url, headers, comment)."""
    examples = []
    for line in demo_banner(url, demo_token(SECRET)).splitlines():
        if not line.strip().startswith("curl "):
            continue
        command, _, comment = line.partition("#")
        words = shlex.split(command)
        headers = {}
        for flag, header in itertools.pairwise(words):
            if flag == "-H":
                name, _, value = header.partition(": ")
                headers[name] = value
        target = next(w for w in words if w.startswith("http"))
        examples.append((target, headers, comment.strip()))
    return examples


async def test_every_example_of_the_banner_answers_as_its_comment_says(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_JWT_SECRET", SECRET)  # the banner's token is signed with it
    with trio.fail_after(30):
        stop = trio.Event()
        url = await nursery.start(partial(run_demo, "127.0.0.1:0", shutdown_trigger=stop.wait))
        answers = {}
        async with httpx.AsyncClient(trust_env=False) as client:
            for target, headers, comment in _examples(url):
                r = await client.get(target, headers=headers)
                answers[(target.removeprefix(url), tuple(headers.items()))] = r
                if "400" in comment:
                    assert r.status_code == 400, target
                elif "401" in comment:
                    assert r.status_code == 401, target
                    assert r.headers["www-authenticate"] == "Bearer"
                elif "502" in comment and "now and then" not in comment:
                    assert r.status_code == 502, target
                elif "now and then" in comment:
                    assert r.status_code in (200, 502), target
                else:
                    assert r.status_code == 200, (target, r.text)
        stop.set()

    plain = answers[("/api/users/1/dashboard", ())].json()["profile"]
    german = answers[("/api/users/1/dashboard", (("Accept-Language", "de"),))].json()["profile"]
    assert plain["greeting"] == "Hello, Ada!"
    assert german["greeting"] == "Guten Tag, Ada!"
    assert {k: v for k, v in german.items() if k != "greeting"} == {
        k: v for k, v in plain.items() if k != "greeting"
    }
    me = next(r for (path, headers), r in answers.items() if path == "/api/me" and headers)
    assert me.json() == {"name": "Ada Lovelace", "email": "ada@example.com", "tier": "gold"}
    passthrough = answers[("/api/users/1", ())].json()["data"]
    assert set(passthrough) == {"id", "name", "email", "tier", "address", "greeting"}


def test_the_banner_says_passthrough_is_unfiltered() -> None:
    banner = demo_banner("http://x", demo_token(SECRET))
    line = next(ln for ln in banner.splitlines() if "passthrough" in ln)
    assert "unfiltered" in line
    assert "Unfiltered" in Path(demo_config_path()).read_text()


async def test_demo_config_option_serves_the_users_config_on_the_demo_services(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    file = tmp_path / "mine.yaml"
    file.write_text(
        "version: 1\n"
        "upstreams:\n"
        "  users: {url: '${DEMO_USERS_URL}'}\n"
        "  recs: {url: '${DEMO_RECOMMENDATIONS_URL}', timeout: 2s}\n"
        "endpoints:\n"
        "  - path: /mine/{id}\n"
        "    forward_query: [lang]\n"
        "    backends:\n"
        "      - {name: who, upstream: users, path: '/users/{id}', select: data,"
        " allow: [greeting], required: true}\n"
        "      - {name: recs, upstream: recs, path: '/recommendations/{id}',"
        " select: products, group: recs}\n"
    )
    with trio.fail_after(30):
        url, proc = await start_gateway_process(nursery, "", "--config", str(file), command="demo")
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(url + "/mine/2?lang=fr")
            assert r.status_code == 200, r.text
            assert r.json()["greeting"] == "Bonjour, Grace!"
            assert len(r.json()["recs"]) == 3
            # the bundled demo's endpoints are not served
            assert (await client.get(url + "/api/users/1/dashboard")).status_code == 404
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 0


def test_demo_config_option_with_a_bad_config_exits_2_with_its_problems(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(
        "version: 1\nupstreams:\n  u: {url: '${DEMO_NOPE_URL}'}\nendpoints: []\nnope: 1\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--config", str(file), "--bind", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert any("DEMO_NOPE_URL" in line for line in lines), lines
    assert all(line.startswith(str(file)) for line in lines), lines


async def test_the_demo_puts_each_orders_tracking_into_that_order(
    nursery: trio.Nursery,
) -> None:
    """`/api/users/1/orders` uses `into`: every order carries the tracking answer made for
    its own id. The orders service answers 503 now and then (its backend is required, so
    that is a 502): asked until it answers."""
    with trio.fail_after(30):
        stop = trio.Event()
        url = await nursery.start(partial(run_demo, "127.0.0.1:0", shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(trust_env=False) as client:
            for _ in range(40):
                r = await client.get(url + "/api/users/1/orders")
                if r.status_code == 200:
                    break
                assert r.status_code == 502, r.text
        stop.set()
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-backends"] == "orders=ok, tracking=ok"
    body = r.json()
    assert body["_gateway"]["backends"]["tracking"]["depends_on"] == ["orders"]
    assert "tracking" not in body  # no list of its own: each result is in its order
    items = body["items"]
    assert len(items) >= 2
    for item in items:
        assert item["tracking"] == {
            "order": item["id"],
            "carrier": "trio-express",
            "eta_days": len(item["id"]) % 4 + 1,
        }
