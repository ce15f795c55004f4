"""A real HTTP/1.1 upstream server for tests, built on trio + h11 only.

Usage::

    async with trio.open_nursery() as nursery:
        up: Upstream = await nursery.start(serve_upstream, {"/users/1": Reply(json={"id": 1})})
        ...  # point the code under test at up.url
        nursery.cancel_scope.cancel()

The handler is either an async callable ``RecordedRequest -> Reply`` or a dict mapping an
exact path to a ``Reply`` (unknown paths get ``404 {"error": "no route"}``).

While a response is being produced (handler, ``delay_s``, faults, streaming) the socket is
watched: if the client closes or resets the connection before the response has been sent
completely, the pending work is cancelled and the request's path is appended to
``Upstream.aborted`` (and ``Upstream.aborted_event`` is set).
"""

from __future__ import annotations

import json as _json
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import h11
import trio

__all__ = ["Handler", "RecordedRequest", "Reply", "Upstream", "serve_upstream"]

MAX_INCOMPLETE_EVENT_SIZE: Final = 64 * 1024
RECEIVE_SIZE: Final = 64 * 1024
_LINGER_RST: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, timeout 0
FAULTS: Final = frozenset({"reset", "close", "garbage", "hang", "truncated", "not_json"})


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    target: str  # raw request target, e.g. "/users/1?x=2"
    path: str  # target without the query string
    query: str  # raw query string without "?" ("" if none)
    headers: dict[str, str]  # lower-cased names; repeated names joined with ", "
    body: bytes
    connection_id: int  # increments per accepted TCP connection, starting at 1
    # TLS: the common name of the client certificate the connection was made with, if any
    client_cert_name: str | None = None


@dataclass
class Reply:
    """What the upstream answers. ``Reply()`` is ``200`` with the JSON body ``{}``.

    ``json`` is only used when ``body`` is None; ``json=None`` explicitly means JSON ``null``.
    ``delay_s`` is applied before the response head and before any fault.
    """

    status: int = 200
    json: object = UNSET
    body: bytes | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0
    fault: str | None = None  # "reset" | "close" | "garbage" | "hang" | "truncated" | "not_json"
    chunks: int = 0
    chunk_size: int = 65536
    chunk_delay_s: float = 0.0
    # streamed (``chunks``): after the first chunk, the rest waits until this is set
    gate: trio.Event | None = None
    chunk_data: bytes | None = None  # streamed chunks' content (default: ``x`` repeated)

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; expected one of {sorted(FAULTS)}")


Handler = Callable[[RecordedRequest], Awaitable[Reply]]


class Upstream:
    """State of a running upstream; everything is mutated only from trio tasks."""

    def __init__(self, host: str, port: int, scheme: str = "http") -> None:
        self.host = host
        self.port = port
        self.url = f"{scheme}://{host}:{port}"
        self.requests: list[RecordedRequest] = []
        self.aborted: list[str] = []
        self.aborted_event = trio.Event()
        self.connections_total = 0
        self.connections_open = 0
        # Exceptions raised by the handler (each was answered with a 500).
        self.errors: list[Exception] = []

    def calls(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def reset_events(self) -> None:
        self.aborted_event = trio.Event()

    def _record_abort(self, path: str) -> None:
        self.aborted.append(path)
        self.aborted_event.set()


def _as_handler(handler: Handler | Mapping[str, Reply]) -> Handler:
    if not isinstance(handler, Mapping):
        return handler
    routes = dict(handler)

    async def route(request: RecordedRequest) -> Reply:
        reply = routes.get(request.path)
        return reply if reply is not None else Reply(status=404, json={"error": "no route"})

    return route


def _has_header(headers: list[tuple[str, str]], name: str) -> bool:
    return any(k.lower() == name for k, _ in headers)


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


# What to do with the connection once a response cycle is over.
_Outcome = Literal["keep", "close", "reset"]


class _Connection:
    def __init__(
        self, up: Upstream, handler: Handler, stream: trio.abc.Stream, conn_id: int
    ) -> None:
        self.up = up
        self.handler = handler
        self.stream = stream
        self.conn_id = conn_id
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_INCOMPLETE_EVENT_SIZE)
        self.client_cert_name = _client_cert_name(stream)

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(e) or b"" for e in events)
        await self.stream.send_all(data)

    async def run(self) -> None:
        try:
            while True:
                request = await self.read_request()
                if request is None:
                    return
                self.up.requests.append(request)
                outcome = await self.respond(request)
                if outcome == "reset":
                    # SO_LINGER (on, 0): close() sends a TCP RST instead of a FIN.
                    raw = self.stream
                    if isinstance(raw, trio.SSLStream):
                        raw = raw.transport_stream
                    assert isinstance(raw, trio.SocketStream)
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                if outcome != "keep":
                    return
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return  # e.g. MUST_CLOSE because of "Connection: close"
                self.h11.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                headers = [("content-length", "0"), ("connection", "close")]
                response = h11.Response(status_code=exc.error_status_hint, headers=headers)
                await self.send(response, h11.EndOfMessage())

    async def read_request(self) -> RecordedRequest | None:
        """Read one complete request (head and body); None if the client went away idle."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:
                    await self.send(h11.InformationalResponse(status_code=100, headers=[]))
                self.h11.receive_data(await self.stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed (or PAUSED, which cannot happen here)
                return None
        assert request is not None
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        return RecordedRequest(
            method=request.method.decode("ascii"),
            target=target,
            path=path,
            query=query,
            headers=headers,
            body=bytes(body),
            connection_id=self.conn_id,
            client_cert_name=self.client_cert_name,
        )

    async def respond(self, request: RecordedRequest) -> _Outcome:
        """Produce the response while watching the socket for the client going away."""
        outcome: _Outcome = "close"
        complete = False  # response fully handed to the kernel (or deliberately not sent)
        peer_gone = False

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal peer_gone
            while True:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    peer_gone = True
                    scope.cancel()
                    return
                self.h11.receive_data(data)  # a pipelined request: keep it for later

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                outcome = await self.produce(request)
                complete = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                peer_gone = True
            nursery.cancel_scope.cancel()

        if peer_gone and not complete:
            self.up._record_abort(request.path)
            return "close"
        return "close" if peer_gone else outcome

    async def produce(self, request: RecordedRequest) -> _Outcome:
        try:
            reply = await self.handler(request)
        except Exception as exc:
            self.up.errors.append(exc)
            reply = Reply(status=500, json={"error": f"handler raised {exc!r}"})
        if reply.delay_s > 0:
            await trio.sleep(reply.delay_s)

        fault = reply.fault
        if fault == "reset":
            return "reset"
        if fault == "close":
            return "close"
        if fault == "hang":
            await trio.sleep_forever()
        if fault == "garbage":
            await self.stream.send_all(b"this is not http\r\n\r\n")
            return "close"
        if fault == "truncated":
            head = h11.Response(status_code=reply.status, headers=[("content-length", "1000")])
            await self.send(head, h11.Data(data=b"x" * 10))
            return "close"

        headers = list(reply.headers)
        if fault == "not_json":
            body: bytes | None = b"<html>oops</html>"
            headers = [h for h in headers if h[0].lower() != "content-type"]
            headers.append(("content-type", "text/html"))
        elif reply.chunks > 0:
            body = None
        elif reply.body is not None:
            body = reply.body
        else:
            value = {} if reply.json is UNSET else reply.json
            body = _json.dumps(value).encode()
            if not _has_header(headers, "content-type"):
                headers.append(("content-type", "application/json"))
        if not _has_header(headers, "content-type"):
            headers.append(("content-type", "application/octet-stream"))
        if body is not None and not _has_header(headers, "content-length"):
            headers.append(("content-length", str(len(body))))
        if request.method == "HEAD":
            body = b""

        head = h11.Response(status_code=reply.status, headers=_encode(headers))
        if body is not None:
            await self.send(head, h11.Data(data=body), h11.EndOfMessage())
        else:  # streamed; h11 picks chunked transfer-encoding for HTTP/1.1 clients
            await self.send(head)
            chunk = reply.chunk_data if reply.chunk_data is not None else b"x" * reply.chunk_size
            for i in range(reply.chunks):
                if reply.chunk_delay_s > 0:
                    await trio.sleep(reply.chunk_delay_s)
                if i == 1 and reply.gate is not None:
                    await reply.gate.wait()
                await self.send(h11.Data(data=chunk))
            await self.send(h11.EndOfMessage())
        return "keep"


def _client_cert_name(stream: trio.abc.Stream) -> str | None:
    """The common name of the verified client certificate of a TLS connection."""
    if not isinstance(stream, trio.SSLStream):
        return None
    peer = stream.getpeercert()
    if not peer:
        return None
    return dict(pair[0] for pair in peer["subject"]).get("commonName")


async def _serve_connection(
    up: Upstream,
    handler: Handler,
    stream: trio.SocketStream,
    conn_id: int,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    up.connections_open += 1
    conn_stream: trio.abc.Stream = stream
    try:
        if ssl_context is not None:
            conn_stream = trio.SSLStream(stream, ssl_context, server_side=True)
            await conn_stream.do_handshake()
        await _Connection(up, handler, conn_stream, conn_id).run()
    except Exception:
        pass  # a broken client or protocol error must never take the server down
    finally:
        up.connections_open -= 1
        await trio.aclose_forcefully(stream)


async def serve_upstream(
    handler: Handler | Mapping[str, Reply],
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[Upstream] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on 127.0.0.1:<ephemeral port> until cancelled; reports an ``Upstream``.

    With ``ssl_context`` the server speaks TLS (and ``Upstream.url`` is https).
    """
    handle = _as_handler(handler)
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=1024)
    host, port = listener.socket.getsockname()[:2]
    up = Upstream(host, port, scheme="https" if ssl_context else "http")
    async with listener, trio.open_nursery() as nursery:
        task_status.started(up)
        while True:
            try:
                stream = await listener.accept()
            except OSError:  # e.g. EMFILE: back off instead of dying
                await trio.sleep(0.01)
                continue
            up.connections_total += 1
            nursery.start_soon(
                _serve_connection, up, handle, stream, up.connections_total, ssl_context
            )
