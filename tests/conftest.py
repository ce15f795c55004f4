"""Shared helpers: a gateway served by hypercorn on 127.0.0.1:0, and real upstreams.

Configs in tests are written as Python dicts and given to the gateway as JSON text, which
is YAML too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
import trio

sys.path.insert(0, os.path.dirname(__file__))

from redis_server import RedisServer, free_port
from upstream import Handler, RecordedRequest, Reply, Upstream, serve_upstream

from gateway import GatewayApp, create_app, hypercorn_config, load_config, serve_app


@dataclass
class Gateway:
    url: str
    app: GatewayApp
    client: httpx.AsyncClient

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(self.url + path, **kwargs)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, self.url + path, **kwargs)


def config_text(config: Mapping[str, Any]) -> str:
    return json.dumps(config)


def backend_config(name: str, upstream: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "upstream": upstream, "path": path, **extra}


def recorder(
    reply: Callable[[RecordedRequest], Reply] = lambda req: Reply(json={}),
) -> tuple[list[RecordedRequest], Handler]:
    """An upstream handler that records every request it answers with ``reply(request)``."""
    seen: list[RecordedRequest] = []

    async def handler(req: RecordedRequest) -> Reply:
        seen.append(req)
        return reply(req)

    return seen, handler


async def start_upstream(nursery: trio.Nursery, handler: Handler | Mapping[str, Reply]) -> Upstream:
    up: Upstream = await nursery.start(serve_upstream, handler)
    return up


async def start_gateway(
    nursery: trio.Nursery, config: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> Gateway:
    """Serve ``config`` with hypercorn's trio worker in ``nursery``; a client to talk to it."""
    plan = load_config("test.yaml", env or {}, text=config_text(config))
    app = create_app(plan)
    hc = hypercorn_config(plan, bind="127.0.0.1:0")
    binds = await nursery.start(partial(serve_app, app, hc))
    client = httpx.AsyncClient(timeout=30, trust_env=False)
    return Gateway(binds[0], app, client)


def simple_config(
    upstreams: Mapping[str, Upstream],
    backends: list[dict[str, Any]],
    *,
    path: str = "/api/{id}",
    **endpoint: Any,
) -> dict[str, Any]:
    """One endpoint over the given upstreams."""
    return {
        "version": 1,
        "upstreams": {name: {"url": up.url} for name, up in upstreams.items()},
        "endpoints": [{"path": path, "backends": backends, **endpoint}],
    }


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(url: str, target: str, method: str = "GET") -> RawResponse:
    """Send ``target`` exactly as written (httpx would normalise dot segments)."""
    import h11

    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        data = conn.send(
            h11.Request(
                method=method,
                target=target.encode("latin-1"),
                headers=[("Host", host), ("Connection", "close")],
            )
        )
        await stream.send_all((data or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return RawResponse(status, headers, body)


async def start_gateway_process(
    nursery: trio.Nursery, config_file: str, *args: str, command: str = "serve"
) -> tuple[str, trio.Process]:
    """Run ``python -m gateway COMMAND FILE --bind 127.0.0.1:0`` and learn its URL from stdout."""
    import re
    import subprocess

    cmd = [sys.executable, "-m", "gateway", command]
    if config_file:
        cmd.append(config_file)
    cmd += ["--bind", "127.0.0.1:0", *args]
    proc: trio.Process = await nursery.start(
        partial(trio.run_process, cmd, stdout=subprocess.PIPE, check=False)
    )
    assert proc.stdout is not None
    seen = b""
    while True:
        data = await proc.stdout.receive_some(4096)
        if not data:
            raise AssertionError(f"gateway exited before serving: {seen!r}")
        seen += data
        match = re.search(rb"serving .*?(http://127\.0\.0\.1:\d+)", seen)
        if match:
            # keep draining stdout so the process never blocks on a full pipe
            nursery.start_soon(_drain, proc.stdout)
            return match.group(1).decode(), proc


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(65536):
        pass


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    """A real redis-server on a free loopback port, killed after the test."""
    server = RedisServer(free_port())
    try:
        await server.start()
        yield server
    finally:
        await server.kill()
