"""The upstream transport: HTTP/1.1 keep-alive pools on trio streams, one per origin and
TLS client identity.

Responses are parsed with httptools (llhttp, in C); request heads are encoded here and
validated as strictly as h11 would.

Plugged into httpx as an ``httpx.AsyncBaseTransport``, so httpx stays the client API
(passthrough); the aggregated hot path calls ``GatewayTransport.send`` directly, with no
httpx request or response objects.
Why not httpcore's pool: under a burst it hands one idle connection to many queued
requests, which then run one after another (encode/httpcore#822, #1035), and its per
request cost grows with the number of connections.

Pools are keyed by :data:`PoolKey`: the origin and the client certificate the connections
present (none for most upstreams). Upstreams on one origin with different certificates
get pools of their own, so a connection opened with one identity never carries a request
meant to go out with another: the upstream may authorise by the certificate.

Rules this pool keeps:

- at most ``max_connections`` connections per pool are open, idle or busy; a call
  beyond that waits (inside the caller's cancel scope, so under its deadline);
- idle connections are reused last-in first-out and dropped after ``idle_timeout_s``;
- an idle connection the upstream has closed is never handed out (checked with a
  zero-timeout poll before reuse); if a reused connection still fails before any response
  byte arrives, an idempotent request with a replayable body is retried once on a new one;
- a connection whose request or response is cancelled or abandoned mid-flight is closed
  at once, so the upstream sees the close; only a fully read response returns it to the pool.

No background task: expiry is checked when connections are taken and returned.

Framing: responses may be delimited by Content-Length, chunked coding or the connection's
close; HEAD, 1xx, 204 and 304 responses have no body. A response whose head exceeds
``DEFAULT_MAX_HEAD_BYTES``, that is malformed or truncated raises
``httpx.RemoteProtocolError``. A connection is only reused after an HTTP/1.1 response
that allows keep-alive, to a request without ``Connection: close``, with nothing received
after its end (HEAD responses: never, since a body sent by mistake could not be told
from the next response).
"""

from __future__ import annotations

import re
import select
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import httptools
import httpx
import trio

from .plainstream import PlainStream, close_now, connect_plain

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_IDLE_TIMEOUT_S = 4.0
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
RECEIVE_BYTES = 64 * 1024
# RFC 9110 section 9.2.2: requests that can be repeated without changing the outcome.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

Origin = tuple[str, str, int]
"""(scheme, host, port)."""

ClientIdentity = tuple[str, str]
"""(certificate file, key file): the PEM files of the TLS client certificate presented."""

PoolKey = tuple[str, str, int, ClientIdentity | None]
"""(scheme, host, port, client identity or None): what decides which requests share a pool
and so its connections."""

CLIENT_IDENTITY = "gateway.client_identity"
"""The httpx request extension naming the request's :data:`ClientIdentity` (absent or
None: no client certificate); it picks the pool along with the URL's origin."""

# RFC 9110 section 5.6.2 (tokens); field values as h11 accepts them: no NUL, no CR or LF,
# no leading or trailing whitespace.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_TARGET = re.compile(rb"[^\x00\s]+")

# Header lines already checked, with their lower-case names: most lines of most requests
# (Host, static and forwarded fields) repeat, so each is checked once. Bounded: cleared
# when full.
_CHECKED_LINES: dict[tuple[bytes, bytes], bytes] = {}
_CHECKED_LINES_MAX = 4096


def _checked_name(name: bytes, value: bytes) -> bytes:
    """The lower-case name of a header line h11 would send.

    Raises:
        httpx.LocalProtocolError: a name or value h11 would refuse.
    """
    line = (name, value)
    lower = _CHECKED_LINES.get(line)
    if lower is None:
        if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
            raise httpx.LocalProtocolError(f"invalid request header {name!r}: {value!r}")
        lower = name.lower()
        if len(_CHECKED_LINES) >= _CHECKED_LINES_MAX:
            _CHECKED_LINES.clear()
        _CHECKED_LINES[line] = lower
    return lower


_HTTP_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


@dataclass(frozen=True)
class PoolLimits:
    """One pool's settings (its client identity is part of its :data:`PoolKey`)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    ca_file: str | None = None  # https: verify against these CAs instead of the system's
    server_name: str | None = None  # https: the TLS server name, if not the origin's host


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of one pool."""

    origin: str
    client_cert: str | None  # the certificate file its connections present, if any
    open_connections: int
    idle_connections: int
    active_requests: int
    waiting_requests: int
    connections_opened: int
    connections_reused: int


class _ProtocolError(Exception):
    """The upstream's response is malformed, too large or truncated."""


class _StopAtHead(Exception):
    """Raised from the parser's callback: a HEAD response ends with its head."""


class _Connection:
    """One upstream connection, and the parser of the response it is reading.

    It is the parser's callback object: the callbacks collect the response head, queue
    body chunks in ``body`` and set ``done`` when the response is complete.
    """

    __slots__ = (
        "body",
        "done",
        "head_bytes",
        "head_only",
        "headers",
        "headers_done",
        "http_version",
        "idle_since",
        "keep_alive",
        "may_keep_alive",
        "parser",
        "poller",
        "reason",
        "status",
        "stream",
    )

    def __init__(self, stream: PlainStream | trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.idle_since = 0.0
        self.parser: httptools.HttpResponseParser | None = None
        self.poller: select.poll | None = None  # for looks_closed, made on first reuse
        self.begin(head_only=False, may_keep_alive=False)

    def begin(self, *, head_only: bool, may_keep_alive: bool) -> None:
        """Get ready to read the response to a new request."""
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.http_version = b"HTTP/1.1"
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.done = False
        self.keep_alive = False
        self.may_keep_alive = may_keep_alive
        self.head_only = head_only
        self.head_bytes = 0

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:  # bytes after the end of the response: never reuse
            self.keep_alive = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # not a trailer
            self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if status < 200:  # informational (1xx): skipped
            self.headers = []
            self.reason = b""
            return
        self.status = status
        self.http_version = _HTTP_VERSIONS.get(self.parser.get_http_version(), b"HTTP/1.1")
        self.headers_done = True
        if self.head_only:
            self.done = True
            self.keep_alive = False
            raise _StopAtHead()

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.headers_done:  # else the end of an informational response
            assert self.parser is not None
            self.done = True
            self.keep_alive = (
                self.may_keep_alive
                and self.parser.should_keep_alive()
                and self.parser.get_http_version() == "1.1"
            )

    # -----------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray) -> None:
        """Parse received bytes; raises _ProtocolError if they are not a valid response."""
        if not self.headers_done:
            room = DEFAULT_MAX_HEAD_BYTES - self.head_bytes
            if len(data) > room:  # the head must end within the limit
                self._parse(data[:room])
                if not self.headers_done:
                    raise _ProtocolError(f"response head exceeds {DEFAULT_MAX_HEAD_BYTES} bytes")
                data = data[room:]
            else:
                self.head_bytes += len(data)
        self._parse(data)

    def _parse(self, data: bytes | bytearray) -> None:
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.done:
                # The response is complete; what came after it (or a HEAD response's
                # body) leaves the parser unusable: the connection is not reused.
                self.keep_alive = False
                return
            if isinstance(exc, httptools.HttpParserUpgrade):
                raise _ProtocolError("unexpected protocol switch") from None
            raise _ProtocolError(str(exc) or type(exc).__name__) from exc

    def end_of_stream(self) -> None:
        """The upstream closed the connection: the end of a body delimited by the
        close, else a truncated response."""
        if not self.headers_done:
            raise _ProtocolError("the upstream closed the connection before responding")
        for name, _ in self.headers:
            if name == b"content-length" or name == b"transfer-encoding":
                raise _ProtocolError("the upstream closed the connection mid-body")
        self.done = True
        self.keep_alive = False

    def _socket(self) -> trio.socket.SocketType | socket.socket:
        stream = self.stream
        if isinstance(stream, PlainStream):
            return stream.socket
        return stream.transport_stream.socket

    def close_now(self) -> None:
        """Close without awaiting: safe in cancelled scopes and ``finally`` blocks."""
        self.parser = None  # the parser refers back to this object
        self.poller = None
        close_now(self.stream)

    def looks_closed(self) -> bool:
        """An idle connection with anything to read has been closed (or broken) by the peer."""
        try:
            poller = self.poller
            if poller is None:
                poller = self.poller = select.poll()
                poller.register(
                    self._socket().fileno(), select.POLLIN | select.POLLERR | select.POLLHUP
                )
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


Head = tuple[bytes, int | None, bool, bool]


def _encode_head(
    method_text: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes | None,
) -> Head:
    """The bytes to send (the head, with ``body`` unless it is None because the body
    streams), and the framing: (data, content length, chunked, keep-alive).

    Raises:
        httpx.LocalProtocolError: a method, target or header h11 would refuse to send.
    """
    method = method_text.encode("ascii")
    if _TOKEN.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        raise httpx.LocalProtocolError(f"invalid request line: {method!r} {target!r}")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    length: int | None = None
    chunked = False
    keep_alive = True
    host = False
    for name, value in headers:
        lower = _checked_name(name, value)
        parts += (name, b": ", value, b"\r\n")
        if lower == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise httpx.LocalProtocolError(f"invalid Content-Length {value!r}")
            length = int(value)
        elif lower == b"transfer-encoding":
            if value.lower() != b"chunked" or chunked:
                raise httpx.LocalProtocolError(f"unsupported Transfer-Encoding {value!r}")
            chunked = True
        elif lower == b"host":
            host = True
        elif lower == b"connection" and b"close" in {v.strip() for v in value.lower().split(b",")}:
            keep_alive = False
    if chunked and length is not None:
        raise httpx.LocalProtocolError("both Content-Length and Transfer-Encoding")
    if not host:
        raise httpx.LocalProtocolError("no Host header")
    parts.append(b"\r\n")
    if body is not None:  # the whole body, sent with the head
        if chunked:
            parts.append(b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n")
        elif len(body) != (length or 0):
            raise httpx.LocalProtocolError(
                f"a body of {len(body)} bytes does not match its framing"
            )
        elif body:
            parts.append(body)
    return b"".join(parts), length, chunked, keep_alive


class _StaleConnection(Exception):
    """A reused connection failed before the response started: safe to retry."""


class ConnectionPool:
    """Connections to one origin (scheme, host, port), all made with one client identity
    (for https: the ``ssl_context`` holds its certificate)."""

    def __init__(
        self,
        key: PoolKey,
        limits: PoolLimits,
        ssl_context: ssl.SSLContext | None = None,
        on_change: Callable[[str, str, int, int], None] | None = None,
    ) -> None:
        self.key = key
        self.origin: Origin = key[:3]
        self.limits = limits
        self._ssl_context = ssl_context
        self._on_change = on_change
        self._origin_text = "{}://{}:{}".format(*self.origin)
        self._client_cert = key[3][0] if key[3] is not None else None
        self._retired = False
        self._limiter = trio.CapacityLimiter(limits.max_connections)
        self._idle: list[_Connection] = []
        self._open = 0
        self._opened_total = 0
        self._reused_total = 0

    def statistics(self) -> PoolStatistics:
        limiter = self._limiter.statistics()
        return PoolStatistics(
            origin=self._origin_text,
            client_cert=self._client_cert,
            open_connections=self._open,
            idle_connections=len(self._idle),
            active_requests=limiter.borrowed_tokens,
            waiting_requests=limiter.tasks_waiting,
            connections_opened=self._opened_total,
            connections_reused=self._reused_total,
        )

    # -- connections ----------------------------------------------------------------

    def _report(self) -> None:
        # called when connections open or close, not on every reuse: cheap enough for the
        # hot path; the idle count is as of the last such change
        if self._on_change is not None:
            self._on_change(self._origin_text, self._client_cert or "", self._open, len(self._idle))

    def _take_idle(self) -> _Connection | None:
        now = trio.current_time()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since > self.limits.idle_timeout_s:
                # LIFO: everything below is older still.
                self._discard(conn)
                for old in self._idle:
                    self._discard(old)
                self._idle.clear()
                return None
            if conn.looks_closed():
                self._discard(conn)
                continue
            self._reused_total += 1
            return conn
        return None

    async def open_stream(self) -> PlainStream | trio.SSLStream[trio.SocketStream]:
        """A connection of the pool's origin and client identity, TCP and, for https, the
        TLS handshake; not counted by the pool (its own connections are, by ``_connect``;
        a WebSocket's lives outside it). Waits under the caller's cancel scope.

        Raises:
            httpx.ConnectError: the connection or the TLS handshake failed.
        """
        scheme, host, port = self.origin
        try:
            if scheme != "https":
                return await connect_plain(host, port)
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        assert self._ssl_context is not None
        tls = trio.SSLStream(
            stream,
            self._ssl_context,
            server_hostname=self.limits.server_name or host,
            https_compatible=True,
        )
        try:
            await tls.do_handshake()
        except BaseException as exc:
            stream.socket.close()
            if isinstance(exc, (trio.BrokenResourceError, OSError, ssl.SSLError)):
                # trio wraps the SSL error, with no message of its own
                why = str(exc) or str(exc.__cause__ or "") or type(exc).__name__
                raise httpx.ConnectError(f"TLS handshake with {host}:{port} failed: {why}") from exc
            raise
        return tls

    async def _connect(self) -> _Connection:
        conn = _Connection(await self.open_stream())
        self._open += 1
        self._opened_total += 1
        self._report()
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close_now()
        self._open -= 1
        self._report()

    def _release(self, conn: _Connection, token: object, reusable: bool) -> None:
        self._limiter.release_on_behalf_of(token)
        if reusable and conn.keep_alive and not self._retired:
            conn.idle_since = trio.current_time()
            self._idle.append(conn)
        else:
            self._discard(conn)

    def retire(self) -> None:
        """Replaced by a pool with new settings: close idle connections now, and each busy
        one when its response ends."""
        self._retired = True
        for conn in self._idle:
            self._discard(conn)
        self._idle.clear()

    async def aclose(self) -> None:
        for conn in self._idle:
            self._discard(conn)
        self._idle.clear()
        await trio.lowlevel.checkpoint()

    # -- one request ----------------------------------------------------------------

    async def handle(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes | None,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream | None = None,
    ) -> UpstreamResponse:
        """One exchange: ``body`` is the whole request body (None: none, or it streams
        from ``stream``)."""
        # before anything else: an invalid request sends nothing
        head = _encode_head(method, target, headers, body if stream is None else None)
        token = object()
        await self._limiter.acquire_on_behalf_of(token)
        handed_over = False  # once the response exists, its stream releases the token
        try:
            conn = self._take_idle()
            if conn is not None:
                try:
                    response = await self._exchange(conn, method, stream, head, token, reused=True)
                    handed_over = True
                    return response
                except _StaleConnection as exc:
                    replayable = method in IDEMPOTENT_METHODS and stream is None
                    if not replayable:
                        raise httpx.RemoteProtocolError(
                            "the upstream closed a kept-alive connection"
                        ) from exc
            conn = await self._connect()
            response = await self._exchange(conn, method, stream, head, token, reused=False)
            handed_over = True
            return response
        finally:
            if not handed_over:
                self._limiter.release_on_behalf_of(token)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream | None,
        head: Head,
        token: object,
        *,
        reused: bool,
    ) -> UpstreamResponse:
        """Send the request and read the response head; the body streams later.

        On any failure the connection is closed (never returned to the pool) and the
        error is raised; the caller still holds ``token``. On success ``token`` is handed
        to the response stream, which releases it.
        """
        data, length, chunked, keep_alive = head
        received_any = False
        try:
            conn.begin(head_only=method == "HEAD", may_keep_alive=keep_alive)
            await conn.stream.send_all(data)
            if stream is not None:
                await _send_streamed_body(conn.stream, stream, length, chunked)

            while not conn.headers_done:
                received = await conn.stream.receive_some(RECEIVE_BYTES)
                if not received:
                    conn.end_of_stream()  # raises before the head is complete
                received_any = True
                conn.feed(received)
        except _ProtocolError as exc:
            self._discard(conn)
            if reused and not received_any:
                raise _StaleConnection() from exc
            raise httpx.RemoteProtocolError(f"invalid HTTP response: {exc}") from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._discard(conn)
            if reused and not received_any:
                raise _StaleConnection() from exc
            raise httpx.ReadError(f"connection to upstream failed: {exc}") from exc
        except BaseException:
            self._discard(conn)  # cancelled mid-flight: the upstream sees the close
            raise

        return UpstreamResponse(
            conn.status,
            conn.headers,
            _ResponseStream(self, conn, token),
            conn.http_version,
            conn.reason.strip(b" \t"),
        )


class UpstreamResponse:
    """A response whose head has been read: status, raw header lines (names lower-case,
    in order) and the body, still to stream from ``stream``."""

    __slots__ = ("headers", "http_version", "reason", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        stream: _ResponseStream,
        http_version: bytes = b"HTTP/1.1",
        reason: bytes = b"",
    ) -> None:
        self.status = status
        self.headers = headers
        self.stream = stream
        self.http_version = http_version
        self.reason = reason

    def header(self, name: bytes) -> bytes | None:
        """The first value of a (lower-case) field, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def to_httpx(self) -> httpx.Response:
        return httpx.Response(
            status_code=self.status,
            headers=self.headers,
            stream=self.stream,
            extensions={"http_version": self.http_version, "reason_phrase": self.reason},
        )

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _send_streamed_body(
    stream: PlainStream | trio.SSLStream[trio.SocketStream],
    body: httpx.SyncByteStream | httpx.AsyncByteStream,
    length: int | None,
    chunked: bool,
) -> None:
    sent = 0
    async for chunk in body:  # type: ignore[union-attr]
        if not chunk:
            continue
        sent += len(chunk)
        if chunked:
            await stream.send_all(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            if sent > (length or 0):
                raise httpx.LocalProtocolError("the request body is longer than its framing")
            await stream.send_all(chunk)
    if chunked:
        await stream.send_all(b"0\r\n\r\n")
    elif sent != (length or 0):
        raise httpx.LocalProtocolError("the request body is shorter than its Content-Length")


class _ResponseStream(httpx.AsyncByteStream):
    """A response body read from the connection; returns it to the pool when complete."""

    def __init__(self, pool: ConnectionPool, conn: _Connection, token: object) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._token = token

    def _finish(self, reusable: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn, self._token, reusable)

    def complete_body(self) -> bytes | None:
        """The whole body if it has all arrived already (as a small response does with its
        head), releasing the connection; else None, and the body is to be streamed."""
        conn = self._conn
        if conn is None or not conn.done:
            return None
        chunks = conn.body
        conn.body = []
        self._finish(reusable=True)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        try:
            while True:
                if conn.body:
                    chunks = conn.body
                    conn.body = []
                    yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                if conn.done:
                    self._finish(reusable=True)
                    return
                received = await conn.stream.receive_some(RECEIVE_BYTES)
                if received:
                    conn.feed(received)
                else:
                    conn.end_of_stream()
        except _ProtocolError as exc:
            self._finish(reusable=False)
            raise httpx.RemoteProtocolError(f"invalid response body: {exc}") from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._finish(reusable=False)
            raise httpx.ReadError(f"connection to upstream failed: {exc}") from exc
        except BaseException:
            self._finish(reusable=False)
            raise

    async def aclose(self) -> None:
        # Not read to the end (abandoned, too large, cancelled): the connection cannot be
        # reused, close it now.
        self._finish(reusable=False)


class GatewayTransport(httpx.AsyncBaseTransport):
    """Routes each request to the pool of its :data:`PoolKey`; pools are created on first use.

    Args:
        limits: per-pool settings, keyed by ``(scheme, host, port, client identity)``.
        default_limits: for pools not listed.
        ssl_context: for https pools without their own ``ca_file`` or client identity; the
            default verifies certificates against the system's CAs.
        on_change: called with (origin, client certificate file or "", open, idle)
            whenever a pool's counts change.
    """

    def __init__(
        self,
        limits: Mapping[PoolKey, PoolLimits] | None = None,
        default_limits: PoolLimits = PoolLimits(),
        ssl_context: ssl.SSLContext | None = None,
        on_change: Callable[[str, str, int, int], None] | None = None,
    ) -> None:
        self._on_change = on_change
        self._limits = dict(limits or {})
        self._default_limits = default_limits
        self._ssl_context = ssl_context
        self._pools: dict[PoolKey, ConnectionPool] = {}

    def pool(self, key: PoolKey) -> ConnectionPool:
        pool = self._pools.get(key)
        if pool is None:
            limits = self._limits.get(key, self._default_limits)
            identity = key[3]
            ctx = self._ssl_context
            if key[0] == "https" and (limits.ca_file is not None or identity is not None):
                # a context of the pool's own: the certificate loaded into it is presented
                # in every handshake made with it
                ctx = ssl.create_default_context(cafile=limits.ca_file)
                if identity is not None:
                    ctx.load_cert_chain(*identity)
            elif key[0] == "https" and ctx is None:
                ctx = self._ssl_context = ssl.create_default_context()
            pool = ConnectionPool(key, limits, ctx, self._on_change)
            self._pools[key] = pool
        return pool

    def reconfigure(self, limits: Mapping[PoolKey, PoolLimits]) -> None:
        """New per-pool settings (a config reload). Pools whose settings are unchanged
        are kept with their connections; changed ones are retired and rebuilt on next use."""
        self._limits = dict(limits)
        for key, pool in list(self._pools.items()):
            # A client identity is only used where the config names it: once none does,
            # no new request would take the pool's idle connections.
            unused = key[3] is not None and key not in self._limits
            if unused or pool.limits != self._limits.get(key, self._default_limits):
                pool.retire()
                del self._pools[key]

    async def open_stream(self, key: PoolKey) -> PlainStream | trio.SSLStream[trio.SocketStream]:
        """A connection to ``key``'s origin with its TLS settings and client identity,
        outside the pool (see :meth:`ConnectionPool.open_stream`)."""
        return await self.pool(key).open_stream()

    def statistics(self) -> list[PoolStatistics]:
        return [pool.statistics() for pool in self._pools.values()]

    def statistics_of(self, key: PoolKey) -> PoolStatistics | None:
        """One pool's snapshot; None before its first request."""
        pool = self._pools.get(key)
        return pool.statistics() if pool is not None else None

    async def send(
        self,
        key: PoolKey,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes | None,
    ) -> UpstreamResponse:
        """Send one request without building httpx objects (the aggregated hot path):
        ``key`` picks the pool (origin and client identity), ``target`` is the request
        target (path and query, already encoded), ``headers`` the complete header lines
        (Host included), ``body`` the whole body or None."""
        if key[0] not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {key[0]!r}")
        return await self.pool(key).handle(
            method, target, headers, body if body is not None else b""
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        identity: ClientIdentity | None = request.extensions.get(CLIENT_IDENTITY)
        pool = self.pool((scheme, url.host, port, identity))
        if isinstance(request.stream, httpx.ByteStream):
            response = await pool.handle(
                request.method, url.raw_path, request.headers.raw, request.content
            )
        else:
            response = await pool.handle(
                request.method, url.raw_path, request.headers.raw, None, request.stream
            )
        return response.to_httpx()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
