"""WebSocket relays over real sockets: a trio-websocket upstream server on port 0, the
gateway under hypercorn, and trio-websocket clients (or raw sockets where a client must
misbehave)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import trio
import trio_websocket
from conftest import Gateway, config_text, start_gateway
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
)

from gateway import create_app, hypercorn_config, load_config, serve_app
from gateway._server import drain_on_stop

MiB = 1024 * 1024
UPGRADE = (
    b"GET /live HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


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
    - ``/silent``: accepts and never sends;
    - ``/flood``: accepts and sends 64 KiB messages as fast as they are taken.
    """

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    upgraded: trio.Event = field(default_factory=trio.Event)

    async def handler(self, request: WebSocketRequest) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        seen = Seen(request.path, headers, tuple(request.proposed_subprotocols))
        self.seen.append(seen)
        self.upgraded.set()
        if request.path == "/refuse-big":
            await request.reject(404, body=b"x" * 70_000)
            seen.closed.set()
            return
        if request.path == "/refuse":
            await request.reject(
                403,
                extra_headers=[(b"content-type", b"application/json")],
                body=b'{"why": "no"}',
            )
            seen.closed.set()
            return
        chosen = "chat.v2" if "chat.v2" in request.proposed_subprotocols else None
        ws = await request.accept(
            subprotocol=chosen,
            extra_headers=[
                (b"x-upstream", b"yes"),
                (b"content-length", b"0"),
                (b"x-request-id", b"from-upstream"),
            ],
        )
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
        elif path == "/deaf":
            await trio.sleep_forever()
        elif path == "/bigtext":
            size = int(await ws.get_message())
            await ws.send_message("\U0001f600" * size)
            await ws.get_message()
        elif path == "/close-4000":
            await ws.get_message()
            await ws.aclose(4000, "bye")
        elif path == "/flood":
            while True:
                await ws.send_message(b"f" * 65536)


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
            ids = [v for k, v in ws.handshake_headers if k.lower() == b"x-request-id"]
            assert len(ids) == 1 and ids[0] != b"from-upstream"  # the gateway's own id
            await ws.send_message("héllo")
            assert await ws.get_message() == "héllo"
            await ws.send_message(b"\x00\xffbin")
            assert await ws.get_message() == b"\x00\xffbin"
        (seen,) = up.seen
        assert seen.subprotocols == ("chat.v1", "chat.v2")
        assert seen.headers["x-trace"] == "t-1"
        assert seen.headers["x-forwarded-for"] == "127.0.0.1"
        assert seen.headers["x-forwarded-proto"] == "http"  # the scheme, never ws
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
        await stream.send_all(UPGRADE)
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


async def refused_upgrade(url: str, **kwargs: Any) -> ConnectionRejected:
    with pytest.raises(ConnectionRejected) as refused:
        async with connected(url, **kwargs):
            pass
    return refused.value


def error_code(refusal: ConnectionRejected) -> str:
    import orjson

    code: str = orjson.loads(refusal.body or b"")["error"]["code"]
    return code


async def test_auth_rate_limits_origin_and_connection_limit_apply_at_the_upgrade(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    import hashlib

    keys = tmp_path / "keys.txt"
    keys.write_text(f"acme {hashlib.sha256(b'k-acme').hexdigest()}\n")
    up = await start_ws_upstream(nursery)
    config = ws_config(
        up.url,
        auth="partners",
        rate_limit={"rate": "3/h", "key": "ip"},
        websocket={"allow_origins": ["https://app.example"], "max_connections": 1},
    )
    config["auth"] = {"partners": {"api_key": {"keys_file": str(keys)}}}
    gw = await start_gateway(nursery, config)
    key = [(b"x-api-key", b"k-acme")]
    with trio.fail_after(10):
        refusal = await refused_upgrade(ws_url(gw))
        assert (refusal.status_code, error_code(refusal)) == (401, "unauthorized")
        refusal = await refused_upgrade(
            ws_url(gw), extra_headers=[*key, (b"origin", b"https://evil.example")]
        )
        assert (refusal.status_code, error_code(refusal)) == (403, "websocket_origin_refused")
        assert up.seen == []  # nothing refused reached the upstream
        # an allowed origin, and a client without Origin (not a browser), are let through
        async with connected(
            ws_url(gw), extra_headers=[*key, (b"origin", b"https://app.example")]
        ) as ws:
            await ws.send_message("one")
            assert await ws.get_message() == "one"
            refusal = await refused_upgrade(ws_url(gw), extra_headers=key)  # the second socket
            assert (refusal.status_code, error_code(refusal)) == (503, "too_many_websockets")
            assert dict(refusal.headers)[b"retry-after"] == b"1"
        assert len(up.seen) == 1
        await wait_until(lambda: gw.app.relays.total == 0)
        async with connected(ws_url(gw), extra_headers=key) as ws:  # the limit freed
            await ws.send_message("two")
            assert await ws.get_message() == "two"
        refusal = await refused_upgrade(ws_url(gw), extra_headers=key)  # the fourth upgrade
        assert (refusal.status_code, error_code(refusal)) == (429, "rate_limited")
        assert len(up.seen) == 2


async def test_an_upgrade_to_an_endpoint_without_websocket_is_refused_and_plain_gets_still_pass(
    nursery: trio.Nursery,
) -> None:
    from conftest import recorder, start_upstream
    from upstream import Reply

    seen, handler = recorder(lambda req: Reply(json={"plain": True}))
    plain = await start_upstream(nursery, handler)
    config = ws_config(plain.url, path="/data")
    config["endpoints"].append(
        {
            "path": "/plain",
            "passthrough": True,
            "backends": [{"name": "p", "upstream": "ws", "path": "/data"}],
        }
    )
    gw = await start_gateway(nursery, config)
    with trio.fail_after(10):
        refusal = await refused_upgrade(ws_url(gw, "/plain"))
        assert (refusal.status_code, error_code(refusal)) == (400, "websocket_not_accepted")
        refusal = await refused_upgrade(ws_url(gw, "/nowhere"))
        assert (refusal.status_code, error_code(refusal)) == (404, "not_found")
        assert seen == []
        # a WebSocket endpoint still passes plain requests through
        response = await gw.get("/live")
        assert response.status_code == 200
        assert response.json() == {"plain": True}


async def test_a_drain_closes_open_sockets_with_1001_at_the_end_of_graceful_timeout(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    config = ws_config(up.url)
    config["server"] = {"graceful_timeout": "600ms"}
    app, stop, served, binds = await serve_draining(nursery, config)
    url = "ws://" + binds[0].removeprefix("http://") + "/live"
    with trio.fail_after(10):
        async with connected(url) as ws:
            await ws.send_message("before")
            assert await ws.get_message() == "before"
            stop.set()
            await wait_until(lambda: app.relays.closing.is_set())
            started = trio.current_time()
            # messages still flow during graceful_timeout
            await ws.send_message("during")
            assert await ws.get_message() == "during"
            code, reason = await closed_reason(ws)
            waited = trio.current_time() - started
        assert (code, reason) == (1001, "server shutting down")
        assert 0.5 <= waited < 1.5
        await up.seen[0].closed.wait()
        assert up.seen[0].close_code == 1001
        await served.wait()  # and the server stops


async def test_thousands_of_failed_and_cancelled_sockets_leak_nothing(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url))
    refusing = await start_gateway(nursery, ws_config(up.url, path="/refuse"))
    port = int(gw.url.rsplit(":", 1)[1])

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def tasks() -> int:
        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

        return count(trio.lowlevel.current_root_task())

    async def rounds(n: int) -> None:
        for i in range(n):
            if i % 3 == 0:  # refused by the upstream
                with pytest.raises(ConnectionRejected):
                    async with connected(ws_url(refusing)):
                        pass
            elif i % 3 == 1:  # a relay the client ends
                async with connected(ws_url(gw)) as ws:
                    await ws.send_message("x")
                    assert await ws.get_message() == "x"
            else:  # the client vanishes once upgraded, without a close frame
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(UPGRADE)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await stream.receive_some(4096)
                assert head.startswith(b"HTTP/1.1 101")
                await stream.aclose()

    with trio.fail_after(120):
        await rounds(60)  # warm: pools, caches, the first connections
        await wait_until(lambda: gw.app.relays.total == 0)
        before, tasks_before = open_fds(), tasks()
        await rounds(1500)
        await wait_until(lambda: gw.app.relays.total == 0)
        await wait_until(lambda: all(s.closed.is_set() for s in up.seen))
        # the upstream's and the clients' sockets are in this process too: all closed
        assert open_fds() <= before + 5
        assert tasks() <= tasks_before + 5  # every relay's and connection's tasks ended
        assert len(up.seen) >= 1000


async def test_an_https_upstream_is_reached_over_wss_with_its_ca(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    up = WsUpstream()
    server = await nursery.start(
        partial(trio_websocket.serve_websocket, up.handler, "127.0.0.1", 0, server_context)
    )
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    config = ws_config(f"https://127.0.0.1:{server.port}")
    config["upstreams"]["ws"]["ca_file"] = str(ca_file)
    gw = await start_gateway(nursery, config)
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            await ws.send_message("over tls")
            assert await ws.get_message() == "over tls"
    # without the CA the upstream's certificate is refused: a 502, never a plain connection
    del config["upstreams"]["ws"]["ca_file"]
    strict = await start_gateway(nursery, config)
    with trio.fail_after(10):
        refusal = await refused_upgrade(ws_url(strict))
    assert (refusal.status_code, error_code(refusal)) == (502, "upstream_failed")
    assert len(up.seen) == 1


async def test_a_websocket_over_http2_extended_connect_is_relayed(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    """RFC 8441: browsers open WebSockets on an HTTP/2 connection when the server allows
    it (hypercorn does), with a CONNECT whose ``:protocol`` is ``websocket``."""
    from test_sse import H2Client, tls_files
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import CloseConnection, TextMessage

    ca, tls = tls_files(tmp_path)
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, {**ws_config(up.url), "server": {"tls": tls}})
    with trio.fail_after(10):
        client = await H2Client.connect(gw.url, ca)
        async with client.stream:
            await client.receive()  # the server's SETTINGS (ENABLE_CONNECT_PROTOCOL)
            sid = await h2_websocket(client, [("sec-websocket-protocol", "chat.v2")])
            head = dict(client.heads[sid])
            assert head[b":status"] == b"200"
            assert head[b"sec-websocket-protocol"] == b"chat.v2"
            ws = Connection(ConnectionType.CLIENT)
            client.conn.send_data(sid, ws.send(TextMessage(data="over h2")))
            await client.flush()
            received: list[Any] = []
            while not received:
                await client.receive()
                ws.receive_data(client.bodies[sid])
                client.bodies[sid] = b""
                received = list(ws.events())
            assert isinstance(received[0], TextMessage)
            assert received[0].data == "over h2"
            client.conn.send_data(sid, ws.send(CloseConnection(code=4003, reason="h2 bye")))
            await client.flush()
            while sid not in client.ended:  # the close reply, then END_STREAM (RFC 8441)
                await client.receive()
            seen = up.seen[0]
            await seen.closed.wait()
            assert (seen.close_code, seen.close_reason) == (4003, "h2 bye")
            assert seen.headers["x-forwarded-proto"] == "https"


async def read_upgrade(stream: trio.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(4096)
        assert data, "closed before the answer"
        head += data
    return head


async def test_a_non_ascii_handshake_field_is_a_400_and_the_server_goes_on(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url))
    port = int(gw.url.rsplit(":", 1)[1])
    with trio.fail_after(10):
        for field in (
            b"Sec-WebSocket-Protocol: \xc3\xbc",
            b"Sec-WebSocket-Extensions: x\xff",
            b"Connection: Upgrade, \xc3\xbc",
        ):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(UPGRADE.replace(b"\r\n\r\n", b"\r\n" + field + b"\r\n\r\n"))
                head = await read_upgrade(stream)
                assert head.startswith(b"HTTP/1.1 400"), head
                assert b'"code":"invalid_header"' in head + await stream.receive_some(4096)
        assert up.seen == []
        async with connected(ws_url(gw)) as ws:  # still serving
            await ws.send_message("alive")
            assert await ws.get_message() == "alive"


async def test_a_client_that_stops_reading_is_cut_at_send_timeout(nursery: trio.Nursery) -> None:
    up = await start_ws_upstream(nursery)
    config = ws_config(up.url, path="/flood")
    config["server"] = {"send_timeout": "500ms"}
    gw = await start_gateway(nursery, config)
    port = int(gw.url.rsplit(":", 1)[1])
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await stream.send_all(UPGRADE)
        await up.upgraded.wait()
        # never reads again: the gateway's writes fill the buffers, then stall
        await up.seen[0].closed.wait()
        assert up.seen[0].close_code in (1006, 1011, 1001)
        await wait_until(lambda: gw.app.relays.total == 0)
        await stream.aclose()


async def test_a_drain_ends_by_graceful_timeout_even_with_a_client_that_does_not_read(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    config = ws_config(up.url, path="/flood")
    config["server"] = {"graceful_timeout": "500ms", "send_timeout": "1h"}
    _, stop, served, binds = await serve_draining(nursery, config)
    port = int(binds[0].rsplit(":", 1)[1])
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(UPGRADE)
        await up.upgraded.wait()
        await trio.sleep(0.2)  # the flood fills every buffer on the way
        stop.set()
        started = trio.current_time()
        await served.wait()
        assert trio.current_time() - started < 2.5  # graceful 0.5 s and the 1 s allowance
        await up.seen[0].closed.wait()
        assert up.seen[0].close_code == 1001  # not held back by the client that does not read
        await stream.aclose()


async def test_an_upstream_protocol_error_closes_the_client_with_1011(
    nursery: trio.Nursery,
) -> None:
    """An upstream that sends a text frame of invalid UTF-8 is told 1007; the client,
    which did nothing wrong, gets 1011."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Request

    told: list[int] = []
    done = trio.Event()

    async def broken(stream: trio.SocketStream) -> None:
        conn = WSConnection(ConnectionType.SERVER)
        async with stream:
            while True:
                conn.receive_data(await stream.receive_some(4096))
                if any(isinstance(e, Request) for e in conn.events()):
                    break
            await stream.send_all(conn.send(AcceptConnection()))
            await stream.send_all(b"\x81\x02\xff\xfe")  # text, not UTF-8
            while not told:
                data = await stream.receive_some(4096)
                if not data:
                    break
                conn.receive_data(data)
                told.extend(e.code for e in conn.events() if isinstance(e, CloseConnection))
            done.set()

    listeners = await nursery.start(trio.serve_tcp, broken, 0)
    port = listeners[0].socket.getsockname()[1]
    gw = await start_gateway(nursery, ws_config(f"http://127.0.0.1:{port}"))
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            code, _ = await closed_reason(ws)
        assert code == 1011
        await done.wait()
        assert told == [1007]


async def test_a_client_protocol_error_gets_a_close_frame(nursery: trio.Nursery) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url))
    port = int(gw.url.rsplit(":", 1)[1])
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(UPGRADE)
            assert (await read_upgrade(stream)).startswith(b"HTTP/1.1 101")
            # a masked text frame whose payload is not UTF-8 (mask 0: payload as is)
            await stream.send_all(b"\x81\x82\x00\x00\x00\x00\xff\xfe")
            frame = await stream.receive_some(4096)
            assert frame[:1] == b"\x88"  # a close frame
            assert int.from_bytes(frame[2:4], "big") == 1007
        await up.seen[0].closed.wait()
        assert up.seen[0].close_code == 1007


async def test_a_client_that_leaves_during_the_upstream_handshake_cancels_it(
    nursery: trio.Nursery,
) -> None:
    connected_at: list[float] = []
    closed_at: list[float] = []

    async def never_answers(stream: trio.SocketStream) -> None:
        connected_at.append(trio.current_time())
        async with stream:
            while await stream.receive_some(4096):
                pass
        closed_at.append(trio.current_time())

    listeners = await nursery.start(trio.serve_tcp, never_answers, 0)
    port = listeners[0].socket.getsockname()[1]
    config = ws_config(f"http://127.0.0.1:{port}")
    config["endpoints"][0]["backends"][0]["timeout"] = "30s"
    gw = await start_gateway(nursery, config)
    gw_port = int(gw.url.rsplit(":", 1)[1])
    with trio.fail_after(10):
        client = await trio.open_tcp_stream("127.0.0.1", gw_port)
        await client.send_all(UPGRADE)
        await wait_until(lambda: bool(connected_at))
        await client.aclose()
        await wait_until(lambda: bool(closed_at))
        assert closed_at[0] - connected_at[0] < 5  # not the backend's 30 s timeout
        await wait_until(lambda: gw.app.relays.total == 0)


async def test_text_limits_count_bytes_not_characters(nursery: trio.Nursery) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url, websocket={"max_message_size": "64KiB"}))
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            await ws.send_message("\U0001f600" * 16_384)  # 64 KiB of UTF-8: at the limit
            assert len(await ws.get_message()) == 16_384
            await ws.send_message("\U0001f600" * 16_385)  # 20 characters, 65,540 bytes
            assert (await closed_reason(ws))[0] == 1009
    big = await start_gateway(
        nursery, ws_config(up.url, path="/bigtext", websocket={"max_message_size": "64KiB"})
    )
    with trio.fail_after(10):
        async with connected(ws_url(big)) as ws:
            await ws.send_message("16385")
            assert (await closed_reason(ws))[0] == 1009


async def test_the_upstreams_close_code_wins_over_a_client_still_sending(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url, path="/close-4000"))

    async def one() -> tuple[int, str | None]:
        async with connected(ws_url(gw)) as ws:
            async with trio.open_nursery() as inner:

                async def flood() -> None:
                    with contextlib.suppress(ConnectionClosed):
                        while True:
                            await ws.send_message(b"z" * 16384)

                inner.start_soon(flood)
                result = await closed_reason(ws)
                inner.cancel_scope.cancel()
            return result

    with trio.fail_after(20):
        for _ in range(10):
            assert await one() == (4000, "bye")


async def test_a_relay_that_ends_with_the_clients_messages_queued_closes_the_connection(
    nursery: trio.Nursery,
) -> None:
    """The upstream never reads; the client floods until the gateway's queue for it is
    full; at the idle timeout the client is closed with 1001, answers, and the gateway's
    side of the connection must close (a put into the full queue held it open)."""
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(
        nursery, ws_config(up.url, path="/deaf", websocket={"idle_timeout": "500ms"})
    )
    port = int(gw.url.rsplit(":", 1)[1])
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, CloseConnection

    with trio.fail_after(15):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(UPGRADE)
            head = await read_upgrade(stream)
            assert head.startswith(b"HTTP/1.1 101")
            ws = Connection(ConnectionType.CLIENT)
            ws.receive_data(head.split(b"\r\n\r\n", 1)[1])
            frame = ws.send(BytesMessage(data=b"q" * 65536))
            with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
                while True:  # until the gateway stops reading, or closes
                    await stream.send_all(frame)
            closed: list[int] = []
            with contextlib.suppress(trio.BrokenResourceError):
                while not closed:
                    data = await stream.receive_some(65536)
                    assert data, "dropped without a close frame"
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, CloseConnection):
                            closed.append(event.code)
                            await stream.send_all(ws.send(event.response()))
                while await stream.receive_some(65536):  # the gateway closes its side
                    pass
            assert closed == [1001]
        await wait_until(lambda: gw.app.relays.total == 0)


async def test_an_http2_client_sending_on_a_closed_stream_does_not_stop_the_server(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    from test_sse import H2Client, tls_files
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    ca, tls = tls_files(tmp_path)
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(
        nursery, {**ws_config(up.url, path="/close-4000"), "server": {"tls": tls}}
    )
    with trio.fail_after(10):
        client = await H2Client.connect(gw.url, ca)
        async with client.stream:
            await client.receive()
            sid = await h2_websocket(client)
            ws = Connection(ConnectionType.CLIENT)
            client.conn.send_data(sid, ws.send(TextMessage(data="go")))
            await client.flush()
            while sid not in client.ended:  # the upstream's 4000 comes, the stream ends
                await client.receive()
            # a late message, as a page still sending would: DATA on the closed stream
            client.conn.send_data(sid, ws.send(TextMessage(data="late")), end_stream=True)
            await client.flush()
            ping_id = await client.get("/__gateway/health")  # the same connection goes on
            while ping_id not in client.ended:
                await client.receive()
            assert dict(client.heads[ping_id])[b":status"] == b"200"


async def test_an_upgrade_answer_carries_no_content_fields_and_a_huge_refusal_is_a_502(
    nursery: trio.Nursery,
) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url))
    with trio.fail_after(10):
        async with connected(ws_url(gw)) as ws:
            names = {k.decode().lower() for k, _ in ws.handshake_headers}
            assert "x-upstream" in names
            assert "content-length" not in names
    refusing = await start_gateway(nursery, ws_config(up.url, path="/refuse-big"))
    with trio.fail_after(10):
        refusal = await refused_upgrade(ws_url(refusing))
    assert (refusal.status_code, error_code(refusal)) == (502, "upstream_failed")


async def test_subprotocols_offered_on_several_lines_are_one_list(nursery: trio.Nursery) -> None:
    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url))
    port = int(gw.url.rsplit(":", 1)[1])
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            lines = b"Sec-WebSocket-Protocol: chat.v2\r\nSec-WebSocket-Protocol: other\r\n"
            await stream.send_all(UPGRADE[:-2] + lines + b"\r\n")
            head = await read_upgrade(stream)
            assert head.startswith(b"HTTP/1.1 101")
            assert b"sec-websocket-protocol: chat.v2" in head.lower()
        assert up.seen[0].subprotocols == ("chat.v2", "other")


async def test_empty_subprotocol_elements_are_ignored_and_upstream_request_ids_not_passed(
    nursery: trio.Nursery,
) -> None:
    from conftest import start_upstream
    from upstream import Reply

    up = await start_ws_upstream(nursery)
    gw = await start_gateway(nursery, ws_config(up.url))
    with trio.fail_after(10):
        port = int(gw.url.rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(UPGRADE[:-2] + b"Sec-WebSocket-Protocol: ,chat.v2,,\r\n\r\n")
            head = await read_upgrade(stream)
            assert head.startswith(b"HTTP/1.1 101"), head
            assert b"sec-websocket-protocol: chat.v2" in head.lower()
        assert up.seen[0].subprotocols == ("chat.v2",)
    # a plain passthrough answer: one X-Request-Id, the gateway's
    plain = await start_upstream(nursery, {"/echo": Reply(headers=[("X-Request-Id", "up-1")])})
    gw = await start_gateway(nursery, ws_config(plain.url))
    with trio.fail_after(10):
        response = await gw.get("/live")
    ids = response.headers.get_list("x-request-id")
    assert len(ids) == 1 and ids[0] != "up-1"


async def h2_websocket(client: Any, fields: list[tuple[str, str]] | None = None) -> int:
    """Open a WebSocket to ``/live`` on ``client``'s HTTP/2 connection (RFC 8441 extended
    CONNECT, after the server's SETTINGS); the stream id, once its answer has come."""
    sid: int = client.conn.get_next_available_stream_id()
    pseudo = [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":authority", client.authority),
        (":path", "/live"),
    ]
    client.conn.send_headers(sid, [*pseudo, ("sec-websocket-version", "13"), *(fields or [])])
    client.bodies[sid] = b""
    await client.flush()
    while sid not in client.heads:
        await client.receive()
    return sid


async def serve_draining(
    nursery: trio.Nursery, config: dict[str, Any]
) -> tuple[Any, trio.Event, trio.Event, list[str]]:
    """Serve ``config`` in ``nursery`` with the drain trigger of ``gateway serve``: the app,
    the event standing for the first SIGTERM, one set once the server has stopped, and
    the bound URLs."""
    plan = load_config("test.yaml", {}, text=config_text(config))
    app = create_app(plan)
    stop, served = trio.Event(), trio.Event()
    hc = hypercorn_config(plan, bind="127.0.0.1:0")

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve_app(app, hc, shutdown_trigger=drain_on_stop(app, stop), task_status=task_status)
        served.set()

    binds: list[str] = await nursery.start(serve)
    return app, stop, served, binds
