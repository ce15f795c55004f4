"""Tests of the tests/upstream.py helper itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import h11
import httpx
import pytest
import trio
import trio.testing
from upstream import Handler, RecordedRequest, Reply, Upstream, serve_upstream


@asynccontextmanager
async def running(handler: Handler | Mapping[str, Reply]) -> AsyncIterator[Upstream]:
    async with trio.open_nursery() as nursery:
        up: Upstream = await nursery.start(serve_upstream, handler)
        yield up
        nursery.cancel_scope.cancel()


async def wait_for_calls(up: Upstream, path: str, n: int = 1) -> None:
    while up.calls(path) < n:  # noqa: ASYNC110 - polling a plain counter is fine in tests
        await trio.sleep(0.005)


async def raw_get(up: Upstream, path: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(up.host, up.port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return stream


@pytest.mark.trio
async def test_json_reply_and_recorded_request() -> None:
    with trio.fail_after(5):
        routes = {"/users/1": Reply(json={"id": 1}, headers=[("x-up", "yes")])}
        async with running(routes) as up, httpx.AsyncClient(base_url=up.url) as client:
            resp = await client.post(
                "/users/1?x=2&y=3", content=b"hello", headers=[("x-a", "1"), ("X-A", "2")]
            )
            assert resp.status_code == 200
            assert resp.json() == {"id": 1}
            assert resp.headers["content-type"] == "application/json"
            assert resp.headers["x-up"] == "yes"
            missing = await client.get("/nope")
            assert missing.status_code == 404
            assert missing.json() == {"error": "no route"}

        req = up.requests[0]
        assert (req.method, req.target, req.path, req.query) == (
            "POST",
            "/users/1?x=2&y=3",
            "/users/1",
            "x=2&y=3",
        )
        assert req.headers["x-a"] == "1, 2"
        assert req.body == b"hello"
        assert req.connection_id == 1
        assert up.calls("/users/1") == 1
        assert up.calls("/nope") == 1


@pytest.mark.trio
async def test_default_reply_null_and_raw_body() -> None:
    async def handler(req: RecordedRequest) -> Reply:
        if req.path == "/null":
            return Reply(json=None)
        if req.path == "/raw":
            return Reply(status=201, body=b"\x00\x01")
        if req.path == "/boom":
            raise RuntimeError("boom")
        return Reply()

    with trio.fail_after(5):
        async with running(handler) as up, httpx.AsyncClient(base_url=up.url) as client:
            assert (await client.get("/")).content == b"{}"
            assert (await client.get("/null")).content == b"null"
            raw = await client.get("/raw")
            assert (raw.status_code, raw.content) == (201, b"\x00\x01")
            assert raw.headers["content-type"] == "application/octet-stream"
            boom = await client.get("/boom")
            assert boom.status_code == 500
            assert len(up.errors) == 1
            assert (await client.get("/")).status_code == 200  # server still alive


@pytest.mark.trio
async def test_keep_alive_two_requests_one_connection() -> None:
    with trio.fail_after(5):
        async with running({"/a": Reply(json=1), "/b": Reply(json=2)}) as up:
            async with httpx.AsyncClient(base_url=up.url) as client:
                assert (await client.get("/a")).json() == 1
                assert (await client.get("/b")).json() == 2
            assert [r.connection_id for r in up.requests] == [1, 1]
            assert up.connections_total == 1

            # Raw pipelining on one socket, then Connection: close.
            stream = await trio.open_tcp_stream(up.host, up.port)
            await stream.send_all(
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            conn = h11.Connection(h11.CLIENT)
            bodies: list[bytes] = []
            for path in ("/a", "/b"):  # only to drive h11's client state; already sent above
                conn.send(h11.Request(method="GET", target=path, headers=[("host", "x")]))
                conn.send(h11.EndOfMessage())
                while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Data):
                        bodies.append(event.data)
                if path == "/a":
                    conn.start_next_cycle()
            await stream.aclose()
            assert bodies == [b"1", b"2"]
            assert [r.connection_id for r in up.requests[2:]] == [2, 2]


@pytest.mark.trio
async def test_delay_abort_detected_when_client_closes() -> None:
    with trio.fail_after(5):
        async with running({"/slow": Reply(delay_s=30)}) as up:
            stream = await raw_get(up, "/slow")
            await wait_for_calls(up, "/slow")
            await stream.aclose()
            with trio.fail_after(1):
                await up.aborted_event.wait()
            assert up.aborted == ["/slow"]
            await trio.testing.wait_all_tasks_blocked()
            assert up.connections_open == 0

            # A cancelled httpx call also closes its connection; the upstream sees it.
            up.reset_events()
            assert not up.aborted_event.is_set()
            async with httpx.AsyncClient(base_url=up.url) as client:
                with trio.move_on_after(0.2):
                    await client.get("/slow")
            with trio.fail_after(1):
                await up.aborted_event.wait()
            assert up.aborted == ["/slow", "/slow"]


@pytest.mark.trio
async def test_hang_counts_as_abort_and_completed_reply_does_not() -> None:
    with trio.fail_after(5):
        async with running({"/hang": Reply(fault="hang"), "/ok": Reply()}) as up:
            async with httpx.AsyncClient(base_url=up.url) as client:
                assert (await client.get("/ok")).status_code == 200
            stream = await raw_get(up, "/hang")
            await wait_for_calls(up, "/hang")
            await stream.aclose()
            with trio.fail_after(1):
                await up.aborted_event.wait()
            assert up.aborted == ["/hang"]


@pytest.mark.trio
async def test_reset_fault_raises_connection_error() -> None:
    with trio.fail_after(5):
        async with running({"/reset": Reply(fault="reset")}) as up:
            async with httpx.AsyncClient(base_url=up.url) as client:
                with pytest.raises(httpx.ReadError):
                    await client.get("/reset")
            assert up.calls("/reset") == 1
            assert up.aborted == []


@pytest.mark.trio
@pytest.mark.parametrize("fault", ["close", "garbage", "truncated"])
async def test_protocol_faults(fault: str) -> None:
    with trio.fail_after(5):
        async with running({"/f": Reply(fault=fault)}) as up, httpx.AsyncClient() as client:
            # nothing, something non-HTTP, or a short body is answered
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"{up.url}/f")
            assert up.aborted == []


@pytest.mark.trio
async def test_not_json_fault() -> None:
    with trio.fail_after(5):
        async with running({"/f": Reply(status=502, fault="not_json")}) as up:
            async with httpx.AsyncClient(base_url=up.url) as client:
                resp = await client.get("/f")
            assert resp.status_code == 502
            assert resp.headers["content-type"] == "text/html"
            assert resp.content == b"<html>oops</html>"


@pytest.mark.trio
async def test_chunked_streaming_50_chunks() -> None:
    with trio.fail_after(5):
        reply = Reply(chunks=50, chunk_size=1000, chunk_delay_s=0.001)
        async with running({"/stream": reply}) as up:
            async with (
                httpx.AsyncClient(base_url=up.url) as client,
                client.stream("GET", "/stream") as resp,
            ):
                assert resp.headers["transfer-encoding"] == "chunked"
                total = 0
                async for piece in resp.aiter_raw():
                    total += len(piece)
            assert total == 50 * 1000
            assert up.aborted == []


@pytest.mark.trio
async def test_closing_mid_stream_is_an_abort() -> None:
    with trio.fail_after(5):
        reply = Reply(chunks=1000, chunk_size=1000, chunk_delay_s=0.01)
        async with running({"/stream": reply}) as up:
            stream = await raw_get(up, "/stream")
            await stream.receive_some(65536)  # the head and maybe a chunk
            await stream.aclose()
            with trio.fail_after(1):
                await up.aborted_event.wait()
            assert up.aborted == ["/stream"]
