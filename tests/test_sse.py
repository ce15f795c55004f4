"""Server-sent events through a passthrough endpoint, over real sockets: each event reaches
the client as the upstream sends it (with and without compression), a heartbeat keeps a
stream alive past the backend timeout, and a client that leaves closes the upstream
connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
from conftest import backend_config, start_gateway

# What one upstream stream does after sending its head: given a function that sends one
# piece of the body (raising trio.BrokenResourceError once the gateway has gone).
Script = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]


@dataclass
class EventUpstream:
    """A raw HTTP/1.1 upstream answering every request with a ``text/event-stream`` whose
    body ``script`` writes, a chunk per call; it notes when the gateway's connection goes
    (a write failing or the peer closing)."""

    script: Script
    url: str = ""
    heads: list[bytes] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listener.socket.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
            self.heads.append(head)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\n"
                b"Content-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )

            async def send(data: bytes) -> None:
                await stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))

            async def watch(scope: trio.CancelScope) -> None:
                # a GET has no body: anything but the end of the connection is ignored
                while True:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        data = b""
                    if not data:
                        self.closed.set()
                        scope.cancel()
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, nursery.cancel_scope)
                try:
                    await self.script(send)
                    await stream.send_all(b"0\r\n\r\n")
                    self.finished.set()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.closed.set()
                    nursery.cancel_scope.cancel()


def sse_config(url: str, **backend: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {"events": {"url": url}},
        "endpoints": [
            {
                "path": "/events",
                "passthrough": True,
                "deadline": "200ms",  # not applied to passthrough: must never cut a stream
                "forward_headers": ["Last-Event-ID"],
                "backends": [backend_config("events", "events", "/stream", **backend)],
            }
        ],
    }


async def events(response: httpx.Response) -> AsyncIterator[tuple[bytes, float]]:
    """Each complete event (or comment) of ``response`` as it is decoded, with its arrival
    time."""
    pending = b""
    async for data in response.aiter_bytes():
        pending += data
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            yield event, trio.current_time()


@pytest.mark.parametrize("coding", ["identity", "gzip", "br"])
async def test_each_event_arrives_as_it_is_sent(nursery: trio.Nursery, coding: str) -> None:
    sent: list[float] = []

    async def script(send: Callable[[bytes], Awaitable[None]]) -> None:
        for i in range(10):
            await trio.sleep(0.1)
            sent.append(trio.current_time())
            await send(b'id: %d\ndata: {"n": %d}\n\n' % (i, i))

    with trio.fail_after(15):
        up = EventUpstream(script)
        await nursery.start(up.serve)
        gw = await start_gateway(nursery, sse_config(up.url, timeout="1s"))
        arrived: list[tuple[bytes, float]] = []
        headers = {"Accept-Encoding": coding, "Last-Event-ID": "41"}
        async with gw.client.stream("GET", gw.url + "/events", headers=headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            assert r.headers.get("content-encoding", "identity") == coding
            async for event in events(r):
                arrived.append(event)
        assert b"\r\nlast-event-id: 41\r\n" in up.heads[0].lower()
        assert [e for e, _ in arrived] == [b'id: %d\ndata: {"n": %d}' % (i, i) for i in range(10)]
        lags = [at - sent_at for (_, at), sent_at in zip(arrived, sent, strict=True)]

        assert all(0 <= lag < 0.05 for lag in lags), lags


async def test_a_heartbeat_stream_outlives_the_timeout(nursery: trio.Nursery) -> None:
    # 2 s of a stream whose only data is a comment every 100 ms: ten times the backend
    # timeout (200 ms) and the endpoint deadline, never more than half of it apart
    async def script(send: Callable[[bytes], Awaitable[None]]) -> None:
        await send(b"retry: 1000\n\n")
        for _ in range(20):
            await trio.sleep(0.1)
            await send(b": ping\n\n")
        await send(b"data: done\n\n")

    with trio.fail_after(10):
        up = EventUpstream(script)
        await nursery.start(up.serve)
        gw = await start_gateway(nursery, sse_config(up.url, timeout="200ms"))
        started = trio.current_time()
        async with gw.client.stream("GET", gw.url + "/events") as r:
            assert r.status_code == 200
            got = [event async for event, _ in events(r)]
        assert trio.current_time() - started >= 2
        assert got == [b"retry: 1000", *[b": ping"] * 20, b"data: done"]
        assert up.finished.is_set()


async def test_a_silent_stream_is_cut_at_the_timeout(nursery: trio.Nursery) -> None:
    # the other side of the heartbeat: without one, a gap longer than the timeout ends it
    async def script(send: Callable[[bytes], Awaitable[None]]) -> None:
        await send(b"data: first\n\n")
        await trio.sleep_forever()

    with trio.fail_after(10):
        up = EventUpstream(script)
        await nursery.start(up.serve)
        gw = await start_gateway(nursery, sse_config(up.url, timeout="200ms"))
        got: list[bytes] = []
        with pytest.raises(httpx.RemoteProtocolError):
            async with gw.client.stream("GET", gw.url + "/events") as r:
                async for event, _ in events(r):
                    got.append(event)
        assert got == [b"data: first"]
        await up.closed.wait()


@pytest.mark.parametrize("coding", ["identity", "gzip"])
async def test_a_client_that_leaves_closes_the_upstream_connection(
    nursery: trio.Nursery, coding: str
) -> None:
    async def script(send: Callable[[bytes], Awaitable[None]]) -> None:
        i = 0
        while True:  # until the gateway goes away
            await send(b"data: %d\n\n" % i)
            i += 1
            await trio.sleep(0.05)

    with trio.fail_after(10):
        up = EventUpstream(script)
        await nursery.start(up.serve)
        gw = await start_gateway(nursery, sse_config(up.url, timeout="5s"))
        async with gw.client.stream(
            "GET", gw.url + "/events", headers={"Accept-Encoding": coding}
        ) as r:
            got = []
            async for event, _ in events(r):
                got.append(event)
                if len(got) == 3:
                    break
        # leaving the block mid-body closes the client's connection
        assert got == [b"data: 0", b"data: 1", b"data: 2"]
        with trio.fail_after(2):
            await up.closed.wait()
        assert not up.finished.is_set()
