"""Server-sent events through a passthrough endpoint, over real sockets: each event reaches
the client as the upstream sends it (with and without compression, over HTTP/1.1 and
HTTP/2), a heartbeat keeps a stream alive past the backend timeout, a client that leaves
(or resets its HTTP/2 stream) closes the upstream connection, and a drain lets an open
stream run until the graceful timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import trio
import trio.testing
import trustme
from conftest import backend_config, config_text, start_gateway
from test_tls import client_context, write_pair

from gateway import create_app, hypercorn_config, load_config, serve_app
from gateway._server import drain_on_stop

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


# Over HTTP/2 and during a drain: an upstream sending one event every 100 ms until the
# gateway goes away, each event's send time noted.
def ticking(sent: list[float], count: int | None = None) -> Script:
    async def script(send: Callable[[bytes], Awaitable[None]]) -> None:
        i = 0
        while count is None or i < count:
            await trio.sleep(0.1)
            sent.append(trio.current_time())
            await send(b"id: %d\ndata: %d\n\n" % (i, i))
            i += 1

    return script


def tls_files(tmp_path: Path) -> tuple[trustme.CA, dict[str, str]]:
    """A CA and the gateway's ``server.tls`` with a certificate it issued for 127.0.0.1."""
    ca = trustme.CA()
    cert_file, key_file = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    return ca, {"cert_file": cert_file, "key_file": key_file}


@pytest.mark.parametrize("coding", ["identity", "gzip"])
async def test_each_event_arrives_as_it_is_sent_over_http2(
    nursery: trio.Nursery, tmp_path: Path, coding: str
) -> None:
    ca, tls = tls_files(tmp_path)
    sent: list[float] = []
    with trio.fail_after(15):
        up = EventUpstream(ticking(sent, 10))
        await nursery.start(up.serve)
        gw = await start_gateway(
            nursery, {**sse_config(up.url, timeout="1s"), "server": {"tls": tls}}
        )
        arrived: list[tuple[bytes, float]] = []
        async with httpx.AsyncClient(
            http2=True, verify=client_context(ca), trust_env=False
        ) as client:
            headers = {"Accept-Encoding": coding}
            async with client.stream("GET", gw.url + "/events", headers=headers) as r:
                assert (r.http_version, r.status_code) == ("HTTP/2", 200)
                assert r.headers["content-type"] == "text/event-stream"
                assert r.headers.get("content-encoding", "identity") == coding
                async for event in events(r):
                    arrived.append(event)
        assert [e for e, _ in arrived] == [b"id: %d\ndata: %d" % (i, i) for i in range(10)]
        lags = [at - sent_at for (_, at), sent_at in zip(arrived, sent, strict=True)]

        assert all(0 <= lag < 0.05 for lag in lags), lags


class H2Client:
    """One HTTP/2 connection over TLS, driven by hand (httpx closes a response without
    resetting its stream, RFC 9113 section 6.4)."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], authority: str) -> None:
        self.stream = stream
        self.authority = authority
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.heads: dict[int, list[tuple[bytes, bytes]]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()

    @classmethod
    async def connect(cls, url: str, ca: trustme.CA) -> H2Client:
        host, port = url.removeprefix("https://").rsplit(":", 1)
        context = client_context(ca)
        context.set_alpn_protocols(["h2"])
        tcp = await trio.open_tcp_stream(host, int(port))
        stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "h2"
        client = cls(stream, f"{host}:{port}")
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        await self.stream.send_all(self.conn.data_to_send())

    async def get(self, path: str) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", self.authority)]
        self.conn.send_headers(stream_id, [*headers, (":path", path)], end_stream=True)
        self.bodies[stream_id] = b""
        await self.flush()
        return stream_id

    async def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        await self.flush()

    async def receive(self) -> None:
        """Read what the server sent next, acknowledging its data (flow control)."""
        data = await self.stream.receive_some(65536)
        assert data, "the server closed the connection"
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.heads[event.stream_id] = event.headers
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
        await self.flush()


async def test_a_client_that_resets_its_http2_stream_closes_the_upstream_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca, tls = tls_files(tmp_path)
    with trio.fail_after(10):
        up = EventUpstream(ticking([]))
        await nursery.start(up.serve)
        gw = await start_gateway(
            nursery, {**sse_config(up.url, timeout="5s"), "server": {"tls": tls}}
        )
        client = await H2Client.connect(gw.url, ca)
        async with client.stream:
            events_id = await client.get("/events")
            while client.bodies[events_id].count(b"\n\n") < 3:
                await client.receive()
            assert (b":status", b"200") in client.heads[events_id]
            await client.reset(events_id)  # RST_STREAM (CANCEL): the stream alone ends
            with trio.fail_after(2):
                await up.closed.wait()
            assert not up.finished.is_set()
            # the connection itself stays open and serves the next request
            health_id = await client.get("/__gateway/health")
            while health_id not in client.ended:
                await client.receive()
            assert (b":status", b"200") in client.heads[health_id]


async def test_a_stream_open_when_the_drain_starts_runs_until_the_graceful_timeout(
    nursery: trio.Nursery,
) -> None:
    # The first SIGTERM, in-process: the trigger `gateway serve` gives hypercorn. The
    # listener stays open for drain_delay, then open streams get graceful_timeout more.
    drain_delay_s, graceful_timeout_s = 0.3, 1.0
    sent: list[float] = []
    with trio.fail_after(15):
        up = EventUpstream(ticking(sent))
        await nursery.start(up.serve)
        config = sse_config(up.url, timeout="5s")
        config["server"] = {
            "drain_delay": f"{drain_delay_s}s",
            "graceful_timeout": f"{graceful_timeout_s}s",
        }
        app = create_app(load_config("test.yaml", {}, text=config_text(config)))
        stop, listener_closing, stopped = trio.Event(), trio.Event(), trio.Event()
        drain = drain_on_stop(app, stop)

        async def trigger() -> None:
            await drain()
            listener_closing.set()  # hypercorn closes the listener as this returns

        async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
            hc = hypercorn_config(app.plan, bind="127.0.0.1:0")
            await serve_app(app, hc, shutdown_trigger=trigger, task_status=task_status)
            stopped.set()

        [url] = await nursery.start(serve)

        async def a_new_stream_is_refused_once_the_listener_closes() -> None:
            await listener_closing.wait()
            await trio.testing.wait_all_tasks_blocked()  # hypercorn has closed it
            async with httpx.AsyncClient(trust_env=False) as late:
                with pytest.raises(httpx.ConnectError):
                    await late.get(url + "/events")

        arrived: list[tuple[bytes, float]] = []
        drain_at: float | None = None
        async with httpx.AsyncClient(trust_env=False) as client, trio.open_nursery() as checks:
            with pytest.raises(httpx.RemoteProtocolError):  # the body ends incomplete
                async with client.stream("GET", url + "/events") as r:
                    assert r.status_code == 200
                    async for event in events(r):
                        arrived.append(event)
                        if len(arrived) == 3:
                            stop.set()
                            drain_at = trio.current_time()
                            checks.start_soon(a_new_stream_is_refused_once_the_listener_closes)
            cut_at = trio.current_time()
        with trio.fail_after(1):
            await up.closed.wait()
        await stopped.wait()
        assert not up.finished.is_set()

        assert drain_at is not None
        assert [e for e, _ in arrived] == [
            b"id: %d\ndata: %d" % (i, i) for i in range(len(arrived))
        ]
        lags = [at - sent_at for (_, at), sent_at in zip(arrived, sent, strict=False)]
        assert all(0 <= lag < 0.05 for lag in lags), lags
        # cut once the drain delay and the graceful timeout have passed, not before...
        assert 0 <= cut_at - drain_at - (drain_delay_s + graceful_timeout_s) < 0.5
        # ...and until then every event came through, 100 ms apart, up to the cut
        times = [at for _, at in arrived if at > drain_at]
        gaps = [b - a for a, b in zip([drain_at, *times], [*times, cut_at], strict=True)]
        assert len(times) >= 10
        assert max(gaps) < 0.15, gaps
