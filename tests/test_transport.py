"""The upstream connection pool: bounded, LIFO reuse, expiry, stale-connection handling."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import pytest
import trio
from conftest import start_upstream
from upstream import Reply

from gateway import GatewayTransport, PoolLimits
from gateway._upstream.transport import _Connection


def client_for(url: str, **limits: float) -> tuple[httpx.AsyncClient, GatewayTransport]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    transport = GatewayTransport({("http", host, int(port), None): PoolLimits(**limits)})  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, trust_env=False), transport


async def test_connections_are_bounded_and_calls_wait_for_a_free_one(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={}, delay_s=0.05)})
        client, transport = client_for(up.url, max_connections=3)
        async with client:
            async with trio.open_nursery() as n:
                for _ in range(30):
                    n.start_soon(client.get, up.url + "/x")
            assert up.calls("/x") == 30
            assert up.connections_total == 3
            (stats,) = transport.statistics()
            assert stats.open_connections == stats.idle_connections == 3
            assert stats.connections_reused == 27
        (stats,) = transport.statistics()
        assert stats.open_connections == 0  # closing the client closed the idle ones


async def test_a_waiting_call_is_bounded_by_its_cancel_scope(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/hang": Reply(fault="hang")})
        client, transport = client_for(up.url, max_connections=1)
        async with client, trio.open_nursery() as n:
            n.start_soon(client.get, up.url + "/hang")
            await trio.sleep(0.05)
            with trio.move_on_after(0.1) as scope:
                await client.get(up.url + "/hang")  # waits for the only connection
            assert scope.cancelled_caught
            (stats,) = transport.statistics()
            assert stats.waiting_requests == 0
            n.cancel_scope.cancel()
        (stats,) = transport.statistics()
        assert stats.active_requests == 0
        assert stats.open_connections == 0


async def test_idle_connections_expire(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        client, _ = client_for(up.url, idle_timeout_s=0.1)
        async with client:
            await client.get(up.url + "/x")
            await client.get(up.url + "/x")
            assert up.connections_total == 1
            await trio.sleep(0.2)
            await client.get(up.url + "/x")
            assert up.connections_total == 2


async def serve_then_close_idle(
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answers one request per connection with keep-alive, then closes it silently."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.EndOfMessage):
                break
        data = conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
        await stream.send_all((data or b"") + (conn.send(h11.Data(data=b"{}")) or b""))
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        await stream.aclose()  # no Connection: close announced

    await trio.serve_listeners(handle, listeners)


async def test_an_idle_connection_closed_by_the_upstream_is_not_reused(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        port = await nursery.start(serve_then_close_idle)
        url = f"http://127.0.0.1:{port}"
        client, transport = client_for(url)
        async with client:
            for _ in range(5):
                r = await client.get(url + "/x")
                assert r.json() == {}
                await trio.sleep(0.02)  # the server's FIN arrives
            (stats,) = transport.statistics()
            assert stats.connections_opened == 5
            assert stats.connections_reused == 0


async def test_a_stale_connection_is_retried_once_for_idempotent_requests(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        port = await nursery.start(serve_then_close_idle)
        url = f"http://127.0.0.1:{port}"
        client, transport = client_for(url)
        async with client:
            await client.get(url + "/x")
            pool = transport.pool(("http", "127.0.0.1", port, None))
            # Defeat the liveness check so the closed connection is handed out, as when
            # the upstream's close crosses our request on the wire.
            monkeypatch.setattr(_Connection, "looks_closed", lambda self: False)
            await trio.sleep(0.05)
            r = await client.get(url + "/x")
            assert r.json() == {}
            assert pool.statistics().connections_opened == 2
            await trio.sleep(0.05)
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(url + "/x", content=b"not idempotent")


async def test_a_response_not_read_to_the_end_closes_its_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/big": Reply(chunks=50, chunk_size=65536)})
        client, transport = client_for(up.url)
        async with client:
            async with client.stream("GET", up.url + "/big") as r:
                async for _ in r.aiter_raw():
                    break
            (stats,) = transport.statistics()
            assert stats.open_connections == 0
            assert stats.active_requests == 0
            with trio.fail_after(2):
                await up.aborted_event.wait()


# -- response parsing: a raw upstream that answers every request with the same bytes ------


@dataclass
class RawUpstream:
    """Answers each request (a head without body) with ``reply``, sent ``piece`` bytes at
    a time with a pause between pieces (0: all at once), then closes if ``close``."""

    reply: bytes
    piece: int = 0
    close: bool = False
    port: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def serve_raw(raw: RawUpstream, task_status: trio.TaskStatus[None]) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    raw.port = listeners[0].socket.getsockname()[1]
    task_status.started()

    async def handle(stream: trio.SocketStream) -> None:
        raw.connections += 1
        buffer = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                raw.heads.append(head)
                if raw.piece:
                    for i in range(0, len(raw.reply), raw.piece):
                        await stream.send_all(raw.reply[i : i + raw.piece])
                        await trio.sleep(0.001)  # a separate read for the client
                else:
                    await stream.send_all(raw.reply)
                if raw.close:
                    await stream.aclose()
                    return

    await trio.serve_listeners(handle, listeners)


async def start_raw(nursery: trio.Nursery, reply: bytes, **kwargs: Any) -> RawUpstream:
    raw = RawUpstream(reply, **kwargs)
    await nursery.start(serve_raw, raw)
    return raw


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"5\r\nhello\r\n"
    b"1;name=value\r\n \r\n"  # a chunk extension
    b"A\r\n0123456789\r\n"  # upper-case hex
    b"a\r\nabcdefghij\r\n"
    b"0\r\nX-Trailer: ignored\r\n\r\n"  # a trailer
)
CHUNKED_BODY = b"hello 0123456789abcdefghij"


@pytest.mark.parametrize("piece", [0, 1, 7])
async def test_chunked_responses_are_decoded_however_they_are_split(
    nursery: trio.Nursery, piece: int
) -> None:
    with trio.fail_after(10):
        raw = await start_raw(nursery, CHUNKED, piece=piece)
        client, transport = client_for(raw.url)
        async with client:
            for _ in range(2):
                r = await client.get(raw.url + "/x")
                assert r.status_code == 200
                assert r.content == CHUNKED_BODY
                assert "x-trailer" not in r.headers
            (stats,) = transport.statistics()
            assert stats.connections_opened == 1  # kept alive and reused
            assert stats.idle_connections == 1


@pytest.mark.parametrize("piece", [0, 1, 5])
async def test_a_response_head_split_across_many_reads(nursery: trio.Nursery, piece: int) -> None:
    reply = (
        b"HTTP/1.1 201 Created Here\r\n"
        b"Content-Length: 11\r\n"
        b"X-Padded:   some value \t\r\n"
        b"X-Repeated: a\r\nX-Repeated: b\r\n"
        b"\r\n"
        b"hello world"
    )
    with trio.fail_after(10):
        raw = await start_raw(nursery, reply, piece=piece)
        client, transport = client_for(raw.url)
        async with client:
            r = await client.get(raw.url + "/x")
            assert r.status_code == 201
            assert r.reason_phrase == "Created Here"
            assert r.http_version == "HTTP/1.1"
            assert r.headers["x-padded"] == "some value"  # surrounding whitespace dropped
            assert r.headers.get_list("x-repeated") == ["a", "b"]
            assert [name for name, _ in r.headers.raw] == [
                b"content-length",
                b"x-padded",
                b"x-repeated",
                b"x-repeated",
            ]
            assert r.content == b"hello world"
            await client.get(raw.url + "/x")
            assert transport.statistics()[0].connections_opened == 1


def test_the_parser_accepts_a_response_fed_one_byte_at_a_time() -> None:
    conn = _Connection(None)  # type: ignore[arg-type]
    for reply, body in [
        (CHUNKED, CHUNKED_BODY),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", b"z"),
    ]:
        conn.begin(head_only=False, may_keep_alive=True)
        for i in range(len(reply)):
            assert not conn.done
            conn.feed(reply[i : i + 1])
        assert conn.done and conn.keep_alive  # the same parser goes on to the next response
        assert conn.status == 200
        assert b"".join(conn.body) == body


async def test_a_body_delimited_by_the_close_is_read_to_the_end(nursery: trio.Nursery) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"a": 1}' * 1000
    with trio.fail_after(10):
        raw = await start_raw(nursery, reply, piece=1000, close=True)
        client, transport = client_for(raw.url)
        async with client:
            for _ in range(2):
                r = await client.get(raw.url + "/x")
                assert r.content == b'{"a": 1}' * 1000
            (stats,) = transport.statistics()
            assert stats.connections_opened == 2
            assert stats.open_connections == 0


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}EXTRA",  # bytes after the end
    ],
    ids=["connection-close", "http-1.0", "trailing-bytes"],
)
async def test_connections_that_cannot_be_kept_alive_are_not_reused(
    nursery: trio.Nursery, reply: bytes
) -> None:
    with trio.fail_after(10):
        raw = await start_raw(nursery, reply)
        client, transport = client_for(raw.url)
        async with client:
            for _ in range(3):
                r = await client.get(raw.url + "/x")
                assert r.content == b"{}"
            (stats,) = transport.statistics()
            assert stats.connections_opened == 3
            assert stats.open_connections == 0


async def test_a_request_with_connection_close_does_not_keep_its_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        raw = await start_raw(nursery, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        client, transport = client_for(raw.url)
        async with client:
            r = await client.get(raw.url + "/x", headers={"Connection": "close"})
            assert r.content == b"{}"
            assert transport.statistics()[0].open_connections == 0


@pytest.mark.parametrize(
    ("method", "reply"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"),
    ],
)
async def test_responses_without_a_body_do_not_wait_for_one(
    nursery: trio.Nursery, method: str, reply: bytes
) -> None:
    with trio.fail_after(10):
        raw = await start_raw(nursery, reply)
        client, _ = client_for(raw.url)
        async with client:
            with trio.fail_after(2):
                r = await client.request(method, raw.url + "/x")
            assert r.content == b""


MALFORMED = {
    "garbage": b"this is not HTTP\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "bad-header-char": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "length-and-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    ),
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
    "chunk-too-long": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n",
    "truncated-length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
    "truncated-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}",
    "truncated-head": b"HTTP/1.1 200 OK\r\nContent-Len",
    "not-chunked-encoding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    "huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 70_000 + b"\r\n\r\n",
    "closed-without-answer": b"",
}


@pytest.mark.parametrize("reply", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_responses_are_protocol_errors(nursery: trio.Nursery, reply: bytes) -> None:
    with trio.fail_after(10):
        raw = await start_raw(nursery, reply, close=True)
        client, transport = client_for(raw.url)
        async with client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(raw.url + "/x")
            (stats,) = transport.statistics()
            assert stats.open_connections == 0
            assert stats.active_requests == 0


async def test_a_malformed_response_split_into_small_reads_is_a_protocol_error(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        raw = await start_raw(nursery, MALFORMED["bad-chunk-size"], piece=2, close=True)
        client, _ = client_for(raw.url)
        async with client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(raw.url + "/x")


async def test_gzip_bodies_are_decoded_by_httpx(nursery: trio.Nursery) -> None:
    body = gzip.compress(b'{"zipped": true}')
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    with trio.fail_after(10):
        raw = await start_raw(nursery, reply, piece=5)
        client, _ = client_for(raw.url)
        async with client:
            r = await client.get(raw.url + "/x")
            assert r.json() == {"zipped": True}


async def test_request_heads_and_bodies_reach_the_upstream(nursery: trio.Nursery) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"defgh"):
            yield part

    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        client, _ = client_for(up.url)
        async with client:
            await client.post(up.url + "/x?q=1%202", content=b"posted", headers={"X-A": "b"})
            await client.put(up.url + "/x", content=chunks())  # chunked
            await client.delete(up.url + "/x")
        first, second, third = up.requests
        assert (first.method, first.target, first.body) == ("POST", "/x?q=1%202", b"posted")
        assert first.headers["x-a"] == "b"
        assert first.headers["content-length"] == "6"
        assert (second.method, second.body) == ("PUT", b"abcdefgh")
        assert second.headers["transfer-encoding"] == "chunked"
        assert (third.method, third.body) == ("DELETE", b"")
        assert up.connections_total == 1


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Bad", "a\r\nInjected: yes")],
        [("X Bad", "a")],
        [("X-Bad", " leading space")],
        [("Content-Length", "5")],  # does not match the body
        [("Transfer-Encoding", "gzip")],
    ],
)
async def test_invalid_requests_are_refused_before_anything_is_sent(
    nursery: trio.Nursery, headers: list[tuple[str, str]]
) -> None:
    with trio.fail_after(10):
        raw = await start_raw(nursery, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        _, transport = client_for(raw.url)
        request = httpx.Request("POST", raw.url + "/x", content=b"{}")
        for name, value in headers:
            request.headers[name] = value
        with pytest.raises(httpx.LocalProtocolError):
            await transport.handle_async_request(request)
        assert raw.connections == 0
        (stats,) = transport.statistics()
        assert stats.active_requests == 0
        await transport.aclose()


def test_checked_header_lines_are_remembered_within_a_bound() -> None:
    from gateway._upstream import transport as _transport

    _transport._CHECKED_LINES.clear()
    lines = [(b"Host", b"a")] + [
        (b"X-N", b"%d" % i) for i in range(_transport._CHECKED_LINES_MAX + 10)
    ]
    head, *_ = _transport._encode_head("GET", b"/", lines, None)
    assert head.count(b"\r\n") == len(lines) + 2
    assert 0 < len(_transport._CHECKED_LINES) <= _transport._CHECKED_LINES_MAX
    # a remembered valid line does not let an invalid value with the same name through
    _transport._encode_head("GET", b"/", [(b"Host", b"a"), (b"X-A", b"ok")], None)
    with pytest.raises(httpx.LocalProtocolError):
        _transport._encode_head("GET", b"/", [(b"Host", b"a"), (b"X-A", b"ok\r\nX-B: 1")], None)
    assert _transport._CHECKED_LINES[(b"X-A", b"ok")] == b"x-a"
