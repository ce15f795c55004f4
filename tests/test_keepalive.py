"""Kept-alive client connections are idle once a response is sent, whatever served it.

A load balancer's health probe (an admin route) or a passthrough request leaves the
connection open for the next request. Such a connection must be seen as idle: a shutdown
closes it at once (not after ``graceful_timeout``), and hypercorn's keep-alive timeout
closes it when the client sends nothing more. Real sockets, a shutdown trigger the test
controls standing in for SIGTERM.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import h11
import pytest
import trio
from conftest import backend_config, config_text, start_upstream
from upstream import Reply

from gateway import create_app, hypercorn_config, load_config, serve_app

GRACEFUL_S = 20.0
# one path per way a request is served: admin routes and passthrough through Quart, the
# aggregated endpoints without it
PATHS = ("/__gateway/health", "/__gateway/metrics", "/files/a", "/api/1")


def config(up_url: str) -> dict[str, Any]:
    return {
        "version": 1,
        "server": {"graceful_timeout": f"{GRACEFUL_S:g}s"},
        "upstreams": {"u": {"url": up_url}},
        "endpoints": [
            {"path": "/api/{id}", "backends": [backend_config("b", "u", "/x")]},
            {
                "path": "/files/{name}",
                "passthrough": True,
                "backends": [backend_config("f", "u", "/x")],
            },
        ],
    }


async def kept_alive_request(url: str, path: str) -> trio.SocketStream:
    """GET ``path`` on a new connection, read the whole response, keep the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(
        conn.send(h11.Request(method="GET", target=path, headers=[("Host", host)]))
        + conn.send(h11.EndOfMessage())
    )
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            break
    assert status == 200, (path, status)
    assert conn.our_state is h11.DONE and conn.their_state is h11.DONE  # kept alive
    return stream


async def closed_by_server(stream: trio.SocketStream) -> None:
    """Return once the server closes ``stream`` (end of file or a reset)."""
    with contextlib.suppress(trio.BrokenResourceError):
        assert await stream.receive_some(65536) == b""


@pytest.mark.parametrize("path", PATHS)
async def test_shutdown_closes_an_idle_kept_alive_connection_at_once(
    nursery: trio.Nursery, path: str
) -> None:
    with trio.fail_after(GRACEFUL_S / 2):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        plan = load_config("test.yaml", {}, text=config_text(config(up.url)))
        app = create_app(plan)
        stop = trio.Event()
        stopped = trio.Event()

        async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
            hc = hypercorn_config(plan, bind="127.0.0.1:0")
            await serve_app(app, hc, shutdown_trigger=stop.wait, task_status=task_status)
            stopped.set()

        binds = await nursery.start(serve)
        stream = await kept_alive_request(binds[0], path)
        stop.set()
        # graceful_timeout is 20 s: an idle connection must not hold the shutdown
        with trio.fail_after(2):
            await stopped.wait()
            await closed_by_server(stream)


@pytest.mark.parametrize("path", PATHS)
async def test_keep_alive_timeout_closes_an_idle_connection(
    nursery: trio.Nursery, path: str
) -> None:
    with trio.fail_after(15):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        plan = load_config("test.yaml", {}, text=config_text(config(up.url)))
        hc = hypercorn_config(plan, bind="127.0.0.1:0")
        hc.keep_alive_timeout = 0.3
        binds = await nursery.start(partial(serve_app, create_app(plan), hc))
        stream = await kept_alive_request(binds[0], path)
        with trio.fail_after(5):
            await closed_by_server(stream)
