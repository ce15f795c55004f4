"""WebSocket relays over real sockets: a trio-websocket upstream server on port 0, the
gateway under hypercorn, and trio-websocket clients (or raw sockets where a client must
misbehave)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import trio
import trio_websocket
from conftest import Gateway, start_gateway
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
)

MiB = 1024 * 1024


@dataclass
class Seen:
    """One upgrade the upstream received, and how its connection ended."""

    path: str
    headers: dict[str, str]
    subprotocols: tuple[str, ...]
    pings: int = 0
    closed: trio.Event = field(default_factory=trio.Event)
    close_code: int | None = None
    close_reason: str | None = None


@dataclass
class WsUpstream:
    """A WebSocket upstream whose behaviour is chosen by the request path:

    - ``/echo``: accepts (choosing ``chat.v2`` when offered) and echoes every message;
    - ``/close``: accepts, then closes with the code and reason the first message names
      (``"4002 bye"``);
    - ``/big``: accepts and sends one binary message of the size the first message names;
    - ``/refuse``: answers 403 with a JSON body;
    - ``/silent``: accepts and never sends.
    """

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    upgraded: trio.Event = field(default_factory=trio.Event)

    async def handler(self, request: WebSocketRequest) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        seen = Seen(request.path, headers, tuple(request.proposed_subprotocols))
        self.seen.append(seen)
        self.upgraded.set()
        if request.path == "/refuse":
            await request.reject(
                403,
                extra_headers=[(b"content-type", b"application/json")],
                body=b'{"why": "no"}',
            )
            return
        chosen = "chat.v2" if "chat.v2" in request.proposed_subprotocols else None
        ws = await request.accept(subprotocol=chosen, extra_headers=[(b"x-upstream", b"yes")])
        try:
            await self._behave(request.path, ws)
        except ConnectionClosed:
            pass
        finally:
            reason = ws.closed
            if reason is not None:
                seen.close_code, seen.close_reason = reason.code, reason.reason
            seen.closed.set()

    async def _behave(self, path: str, ws: WebSocketConnection) -> None:
        if path == "/echo":
            while True:
                await ws.send_message(await ws.get_message())
        elif path == "/close":
            text = await ws.get_message()
            assert isinstance(text, str)
            code, _, reason = text.partition(" ")
            await ws.aclose(int(code), reason or None)
        elif path == "/big":
            size = int(await ws.get_message())
            await ws.send_message(b"x" * size)
            await ws.get_message()
        elif path == "/silent":
            await ws.get_message()


async def start_ws_upstream(nursery: trio.Nursery) -> WsUpstream:
    up = WsUpstream()
    server = await nursery.start(
        partial(
            trio_websocket.serve_websocket,
            up.handler,
            "127.0.0.1",
            0,
            None,
            max_message_size=8 * MiB,
        )
    )
    up.url = f"http://127.0.0.1:{server.port}"
    return up


def ws_config(up_url: str, path: str = "/echo", **endpoint: Any) -> dict[str, Any]:
    websocket = endpoint.pop("websocket", True)
    return {
        "version": 1,
        "upstreams": {"ws": {"url": up_url}},
        "endpoints": [
            {
                "path": "/live",
                "passthrough": True,
                "websocket": websocket,
                "backends": [{"name": "live", "upstream": "ws", "path": path}],
                **endpoint,
            }
        ],
    }


def ws_url(gw: Gateway, path: str = "/live") -> str:
    return "ws://" + gw.url.removeprefix("http://") + path


@asynccontextmanager
async def connected(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    kwargs.setdefault("max_message_size", 8 * MiB)
    async with open_websocket_url(url, **kwargs) as ws:
        yield ws


async def closed_reason(ws: WebSocketConnection) -> tuple[int, str | None]:
    """Wait for the gateway to close ``ws``; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.get_message()
    assert ws.closed is not None
    return ws.closed.code, ws.closed.reason


async def test_text_and_binary_messages_are_relayed_both_ways(nursery: trio.Nursery) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url, forward_headers=["X-Trace"]))
    with trio.fail_after(10):
        async with connected(
            ws_url(gw), subprotocols=["chat.v1", "chat.v2"], extra_headers=[(b"x-trace", b"t-1")]
        ) as ws:
            assert ws.subprotocol == "chat.v2"
            headers = {k.decode().lower(): v.decode() for k, v in ws.handshake_headers}
            assert headers["x-upstream"] == "yes"
            assert headers["x-request-id"]
            await ws.send_message("héllo")
            assert await ws.get_message() == "héllo"
            await ws.send_message(b"\x00\xffbin")
            assert await ws.get_message() == b"\x00\xffbin"
        (seen,) = up.seen
        assert seen.subprotocols == ("chat.v1", "chat.v2")
        assert seen.headers["x-trace"] == "t-1"
        assert seen.headers["x-forwarded-for"] == "127.0.0.1"
        await seen.closed.wait()
        assert seen.close_code == 1000


async def test_a_1_mib_message_goes_through_whole(nursery: trio.Nursery) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url))
    text = "".join(chr(ord("a") + i % 26) for i in range(MiB))
    with trio.fail_after(20):
        async with connected(ws_url(gw)) as ws:
            await ws.send_message(text)
            assert await ws.get_message() == text
            await ws.send_message(text.encode())
            assert await ws.get_message() == text.encode()


async def test_an_oversize_client_message_closes_both_sides_with_1009(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    config = ws_config(up.url, websocket={"max_message_size": "64KiB"})
    gw = await start_gateway(nursery, config)
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            await ws.send_message(b"y" * (64 * 1024))  # at the limit: relayed
            assert len(await ws.get_message()) == 64 * 1024
            await ws.send_message(b"y" * (64 * 1024 + 1))
            code, _ = await closed_reason(ws)
            assert code == 1009
        await up.seen[0].closed.wait()
        assert up.seen[0].close_code == 1009


async def test_an_oversize_upstream_message_closes_both_sides_with_1009(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(
        nursery, ws_config(up.url, path="/big", websocket={"max_message_size": "100KiB"})
    )
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            await ws.send_message(str(100 * 1024 + 1))
            code, _ = await closed_reason(ws)
            assert code == 1009
        await up.seen[0].closed.wait()
        assert up.seen[0].close_code == 1009


async def test_close_codes_and_reasons_cross_both_ways(nursery: trio.Nursery) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url, path="/close"))
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            await ws.send_message("4002 upstream says bye")
            assert await closed_reason(ws) == (4002, "upstream says bye")
    echo = await start_gateway(nursery, ws_config(up.url))
    with trio.fail_after(10):
        for code in (1000, 1001, 3000, 4001):
            async with connected(ws_url(echo)) as ws:
                await ws.send_message("ping")
                assert await ws.get_message() == "ping"
                await ws.aclose(code, f"client {code}")
            seen = up.seen[-1]
            await seen.closed.wait()
            assert (seen.close_code, seen.close_reason) == (code, f"client {code}")


async def test_an_idle_socket_is_closed_with_1001_both_sides(nursery: trio.Nursery) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(
        nursery, ws_config(up.url, path="/silent", websocket={"idle_timeout": "300ms"})
    )
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            started = trio.current_time()
            code, reason = await closed_reason(ws)
            waited = trio.current_time() - started
        assert (code, reason) == (1001, "idle timeout")
        assert 0.25 <= waited < 2
        await up.seen[0].closed.wait()
        assert up.seen[0].close_code == 1001


async def test_client_pings_keep_a_quiet_socket_open_and_are_answered(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(
        nursery, ws_config(up.url, path="/echo", websocket={"idle_timeout": "400ms"})
    )
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            for _ in range(10):  # 1.5 s of pings only: over three idle timeouts
                await ws.ping()  # returns once the pong has come back
                await trio.sleep(0.15)
            await ws.send_message("still here")
            assert await ws.get_message() == "still here"


async def test_an_upstream_that_refuses_the_upgrade_gives_its_own_answer(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url, path="/refuse"))
    with trio.fail_after(10), pytest.raises(ConnectionRejected) as refused:
        async with connected(ws_url(gw)):
            pass
    assert refused.value.status_code == 403
    assert refused.value.body == b'{"why": "no"}'
    headers = {k.decode().lower(): v.decode() for k, v in refused.value.headers}
    assert headers["x-gateway-backends"] == "live=http_403"


async def test_an_upstream_that_is_down_or_not_a_websocket_gives_a_json_502(
    nursery: trio.Nursery,
) -> None:
    import orjson

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    gw = await start_gateway(nursery, ws_config(dead))
    with trio.fail_after(10), pytest.raises(ConnectionRejected) as refused:
        async with connected(ws_url(gw)):
            pass
    assert refused.value.status_code == 502
    body = orjson.loads(refused.value.body or b"")
    assert body["error"]["code"] == "upstream_failed"
    assert body["backends"] == {"live": "unreachable"}

    # a plain HTTP server answering 200 to the upgrade
    from conftest import start_upstream
    from upstream import Reply

    plain = await start_upstream(nursery, {"/echo": Reply(json={"not": "a websocket"})})
    gw = await start_gateway(nursery, ws_config(plain.url))
    with trio.fail_after(10), pytest.raises(ConnectionRejected) as refused:
        async with connected(ws_url(gw)):
            pass
    assert refused.value.status_code == 502
    assert orjson.loads(refused.value.body or b"")["error"]["code"] == "upstream_failed"


async def test_a_client_that_vanishes_closes_the_upstream_connection(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url))
    port = int(gw.url.rsplit(":", 1)[1])
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"GET /live HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 101")
        await up.upgraded.wait()
        # gone without a close frame: a reset
        stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        await stream.aclose()
        await up.seen[0].closed.wait()
        assert up.seen[0].close_code == 1006  # dropped, as the client's was
        await wait_until(lambda: gw.app.relays.total == 0)


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - a counter the relay tasks change
        await trio.sleep(0.01)
