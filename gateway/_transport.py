"""The upstream transport: an HTTP/1.1 keep-alive pool per origin, on h11 and trio streams.

Plugged into httpx as an ``httpx.AsyncBaseTransport``, so httpx stays the client API.
Why not httpcore's pool: under a burst it hands one idle connection to many queued
requests, which then run one after another (encode/httpcore#822, #1035), and its per
request cost grows with the number of connections.

Rules this pool keeps:

- at most ``max_connections`` connections per origin are open, idle or busy; a call
  beyond that waits (inside the caller's cancel scope, so under its deadline);
- idle connections are reused last-in first-out and dropped after ``idle_timeout_s``;
- an idle connection the upstream has closed is never handed out (checked with a
  zero-timeout poll before reuse); if a reused connection still fails before any response
  byte arrives, an idempotent request with a replayable body is retried once on a new one;
- a connection whose request or response is cancelled or abandoned mid-flight is closed
  at once, so the upstream sees the close; only a fully read response returns it to the pool.

No background task: expiry is checked when connections are taken and returned.
"""

from __future__ import annotations

import contextlib
import select
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import h11
import httpx
import trio

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_IDLE_TIMEOUT_S = 4.0
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
RECEIVE_BYTES = 64 * 1024
# RFC 9110 section 9.2.2: requests that can be repeated without changing the outcome.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

Origin = tuple[str, str, int]


@dataclass(frozen=True)
class PoolLimits:
    """One origin's pool settings."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    ca_file: str | None = None  # https: verify against these CAs instead of the system's


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of one origin's pool."""

    origin: str
    open_connections: int
    idle_connections: int
    active_requests: int
    waiting_requests: int
    connections_opened: int
    connections_reused: int


class _Connection:
    __slots__ = ("h11", "idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=DEFAULT_MAX_HEAD_BYTES)
        self.idle_since = 0.0

    def _socket(self) -> trio.socket.SocketType:
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        assert isinstance(stream, trio.SocketStream)
        return stream.socket

    def close_now(self) -> None:
        """Close without awaiting: safe in cancelled scopes and ``finally`` blocks."""
        with contextlib.suppress(OSError):  # an already broken socket
            self._socket().close()

    def looks_closed(self) -> bool:
        """An idle connection with anything to read has been closed (or broken) by the peer."""
        try:
            poller = select.poll()
            poller.register(
                self._socket().fileno(), select.POLLIN | select.POLLERR | select.POLLHUP
            )
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


class _StaleConnection(Exception):
    """A reused connection failed before the response started: safe to retry."""


class ConnectionPool:
    """Connections to one origin (scheme, host, port)."""

    def __init__(
        self,
        origin: Origin,
        limits: PoolLimits,
        ssl_context: ssl.SSLContext | None = None,
        on_change: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.origin = origin
        self.limits = limits
        self._ssl_context = ssl_context
        self._on_change = on_change
        self._origin_text = "{}://{}:{}".format(*origin)
        self._retired = False
        self._limiter = trio.CapacityLimiter(limits.max_connections)
        self._idle: list[_Connection] = []
        self._open = 0
        self._opened_total = 0
        self._reused_total = 0

    def statistics(self) -> PoolStatistics:
        scheme, host, port = self.origin
        limiter = self._limiter.statistics()
        return PoolStatistics(
            origin=f"{scheme}://{host}:{port}",
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
            self._on_change(self._origin_text, self._open, len(self._idle))

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

    async def _connect(self) -> _Connection:
        scheme, host, port = self.origin
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._open += 1
        self._opened_total += 1
        self._report()
        if scheme == "https":
            assert self._ssl_context is not None
            tls = trio.SSLStream(
                stream, self._ssl_context, server_hostname=host, https_compatible=True
            )
            try:
                await tls.do_handshake()
            except BaseException as exc:
                self._discard(_Connection(stream))
                if isinstance(exc, (trio.BrokenResourceError, OSError, ssl.SSLError)):
                    raise httpx.ConnectError(
                        f"TLS handshake with {host}:{port} failed: {exc}"
                    ) from exc
                raise
            stream = tls
        return _Connection(stream)

    def _discard(self, conn: _Connection) -> None:
        conn.close_now()
        self._open -= 1
        self._report()

    def _release(self, conn: _Connection, token: object, reusable: bool) -> None:
        self._limiter.release_on_behalf_of(token)
        state = conn.h11
        if (
            reusable
            and not self._retired
            and state.our_state is h11.DONE
            and state.their_state is h11.DONE
        ):
            state.start_next_cycle()
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

    async def handle(self, request: httpx.Request) -> httpx.Response:
        token = object()
        await self._limiter.acquire_on_behalf_of(token)
        handed_over = False  # once the response exists, its stream releases the token
        try:
            replayable = request.method in IDEMPOTENT_METHODS and isinstance(
                request.stream, httpx.ByteStream
            )
            conn = self._take_idle()
            if conn is not None:
                try:
                    response = await self._exchange(conn, request, token, reused=True)
                    handed_over = True
                    return response
                except _StaleConnection as exc:
                    if not replayable:
                        raise httpx.RemoteProtocolError(
                            "the upstream closed a kept-alive connection"
                        ) from exc
            conn = await self._connect()
            response = await self._exchange(conn, request, token, reused=False)
            handed_over = True
            return response
        finally:
            if not handed_over:
                self._limiter.release_on_behalf_of(token)

    async def _exchange(
        self, conn: _Connection, request: httpx.Request, token: object, *, reused: bool
    ) -> httpx.Response:
        """Send the request and read the response head; the body streams later.

        On any failure the connection is closed (never returned to the pool) and the
        error is raised; the caller still holds ``token``. On success ``token`` is handed
        to the response stream, which releases it.
        """
        state = conn.h11
        received_any = False
        try:
            head = state.send(
                h11.Request(
                    method=request.method.encode("ascii"),
                    target=request.url.raw_path,
                    headers=request.headers.raw,
                )
            )
            assert head is not None
            if isinstance(request.stream, httpx.ByteStream):
                body = request.content
                data = head
                if body:
                    data += state.send(h11.Data(data=body)) or b""
                data += state.send(h11.EndOfMessage()) or b""
                await conn.stream.send_all(data)
            else:
                await conn.stream.send_all(head)
                async for chunk in request.stream:  # type: ignore[union-attr]
                    if chunk:
                        await conn.stream.send_all(state.send(h11.Data(data=chunk)) or b"")
                await conn.stream.send_all(state.send(h11.EndOfMessage()) or b"")

            while True:
                event = state.next_event()
                if event is h11.NEED_DATA:
                    data = bytes(await conn.stream.receive_some(RECEIVE_BYTES))
                    if data:
                        received_any = True
                    state.receive_data(data)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    break
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        except (h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
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

        stream = _ResponseStream(self, conn, token)
        return httpx.Response(
            status_code=event.status_code,
            headers=event.headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason},
        )


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

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        state = conn.h11
        try:
            while True:
                event = state.next_event()
                if event is h11.NEED_DATA:
                    state.receive_data(bytes(await conn.stream.receive_some(RECEIVE_BYTES)))
                elif isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._finish(reusable=True)
                    return
                else:
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        except h11.RemoteProtocolError as exc:
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
    """Routes each request to the pool of its origin; pools are created on first use.

    Args:
        limits: per-origin limits, keyed by ``(scheme, host, port)``.
        default_limits: for origins not listed.
        ssl_context: for https origins without their own ``ca_file``; the default
            verifies certificates against the system's CAs.
        on_change: called with (origin, open, idle) whenever a pool's counts change.
    """

    def __init__(
        self,
        limits: Mapping[Origin, PoolLimits] | None = None,
        default_limits: PoolLimits = PoolLimits(),
        ssl_context: ssl.SSLContext | None = None,
        on_change: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self._on_change = on_change
        self._limits = dict(limits or {})
        self._default_limits = default_limits
        self._ssl_context = ssl_context
        self._pools: dict[Origin, ConnectionPool] = {}

    def pool(self, origin: Origin) -> ConnectionPool:
        pool = self._pools.get(origin)
        if pool is None:
            limits = self._limits.get(origin, self._default_limits)
            ctx = self._ssl_context
            if origin[0] == "https" and limits.ca_file is not None:
                ctx = ssl.create_default_context(cafile=limits.ca_file)
            elif origin[0] == "https" and ctx is None:
                ctx = self._ssl_context = ssl.create_default_context()
            pool = ConnectionPool(origin, limits, ctx, self._on_change)
            self._pools[origin] = pool
        return pool

    def reconfigure(self, limits: Mapping[Origin, PoolLimits]) -> None:
        """New per-origin settings (a config reload). Pools whose settings are unchanged
        are kept with their connections; changed ones are retired and rebuilt on next use."""
        self._limits = dict(limits)
        for origin, pool in list(self._pools.items()):
            if pool.limits != self._limits.get(origin, self._default_limits):
                pool.retire()
                del self._pools[origin]

    def statistics(self) -> list[PoolStatistics]:
        return [pool.statistics() for pool in self._pools.values()]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        return await self.pool((scheme, url.host, port)).handle(request)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
