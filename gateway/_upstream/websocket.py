"""The upstream side of a WebSocket relay: a client WebSocket (RFC 6455) on wsproto, over
a connection the transport opens (:meth:`~gateway._upstream.transport.GatewayTransport.open_stream`:
the pool's TLS settings and client certificate, outside the pool).

Why not trio-websocket's client: it answers pings itself with no way to see them, so a ping
could not be relayed nor counted as activity; it reads in a background task of a nursery
the caller passes, and a refused upgrade is raised from that task, so a refusal (whose
status and body the client is to get) would arrive as an exception group out of the
caller's nursery; and it queues whole messages ahead of the reader. Here one task reads
(:meth:`UpstreamWebSocket.receive`), any task sends (a lock orders the frames), every wait
is the caller's to bound, and nothing runs in the background. wsproto, which
trio-websocket is built on too, does the framing, masking, UTF-8 checks and the handshake.

Messages are assembled here up to ``max_message_bytes`` (all frames of one message): a
bigger one is answered with a close frame 1009 and reported as :class:`Closed` (code 1009).
Pings are answered at once and reported (:class:`Pinged`); pongs are dropped.
"""

from __future__ import annotations

import collections
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .._rules.headers import RawHeaders
from .._rules.websocket import MESSAGE_TOO_BIG, NO_STATUS_RECEIVED
from .plainstream import PlainStream, close_now

RECEIVE_BYTES = 64 * 1024
MAX_REFUSAL_BODY_BYTES = 64 * 1024

Stream = PlainStream | trio.SSLStream[trio.SocketStream]
_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError)


class HandshakeFailed(Exception):
    """The upstream broke the opening handshake: it closed the connection, sent something
    that is not an HTTP response, or a 101 without a valid ``Sec-WebSocket-Accept`` (or
    with a subprotocol nobody offered)."""


@dataclass(frozen=True)
class Refusal:
    """The upstream answered the upgrade with an HTTP response instead of 101: its status,
    fields and body (at most :data:`MAX_REFUSAL_BODY_BYTES`, ``truncated`` when longer)."""

    status: int
    headers: RawHeaders
    body: bytes
    truncated: bool = False


@dataclass(frozen=True)
class Pinged:
    """The upstream sent a ping (already answered)."""

    payload: bytes


@dataclass(frozen=True)
class Closed:
    """The upstream's side has ended: with its close frame's ``code`` (1005 for a frame
    without one) and ``reason``, 1009 for a message over the limit, or ``code`` None when
    the connection dropped or broke the protocol (``reason`` says which)."""

    code: int | None
    reason: str | None = None


Received = str | bytes | Pinged | Closed


async def open_websocket(
    stream: Stream,
    host: str,
    target: str,
    headers: RawHeaders,
    subprotocols: Sequence[str],
    max_message_bytes: int,
) -> UpstreamWebSocket | Refusal:
    """Send the opening handshake on ``stream`` (RFC 6455 section 4.1) and read the answer:
    the open socket, or the upstream's :class:`Refusal`. ``headers`` are sent as they are
    (no ``Host``, no handshake fields: wsproto makes those); waits are the caller's to
    bound. The stream is closed on a refusal and on failure, cancellation included.

    Raises:
        HandshakeFailed: see there.
    """
    conn = WSConnection(ConnectionType.CLIENT)
    try:
        try:
            await stream.send_all(
                conn.send(
                    Request(
                        host=host,
                        target=target,
                        subprotocols=list(subprotocols),
                        extra_headers=list(headers),
                    )
                )
            )
            status = 0
            refused_headers: RawHeaders = []
            body = bytearray()
            while True:
                data = await stream.receive_some(RECEIVE_BYTES)
                conn.receive_data(bytes(data) if data else None)
                for event in conn.events():
                    if isinstance(event, AcceptConnection):
                        return UpstreamWebSocket(
                            stream, conn, event.subprotocol, event.extra_headers, max_message_bytes
                        )
                    if isinstance(event, RejectConnection):
                        status, refused_headers = event.status_code, list(event.headers)
                        if not event.has_body:
                            close_now(stream)
                            return Refusal(status, refused_headers, b"")
                    elif isinstance(event, RejectData):
                        body += event.data
                        if len(body) > MAX_REFUSAL_BODY_BYTES:
                            close_now(stream)
                            return Refusal(
                                status,
                                refused_headers,
                                bytes(body[:MAX_REFUSAL_BODY_BYTES]),
                                truncated=True,
                            )
                        if event.body_finished:
                            close_now(stream)
                            return Refusal(status, refused_headers, bytes(body))
                if not data:
                    raise HandshakeFailed("the upstream closed the connection in the handshake")
        except RemoteProtocolError as exc:
            raise HandshakeFailed(f"not a WebSocket handshake answer: {exc}") from None
        except LocalProtocolError as exc:  # a header line wsproto (h11) would not send
            raise HandshakeFailed(f"the handshake request could not be sent: {exc}") from None
        except _STREAM_ERRORS as exc:
            raise HandshakeFailed(f"connection lost in the handshake: {exc}") from None
    except BaseException:
        close_now(stream)
        raise


class UpstreamWebSocket:
    """An open client WebSocket to the upstream. One task calls :meth:`receive`; any task
    may send. ``subprotocol`` is the upstream's choice (None: none); ``headers`` are the
    101 answer's fields other than the handshake's own."""

    def __init__(
        self,
        stream: Stream,
        conn: WSConnection,
        subprotocol: str | None,
        headers: RawHeaders,
        max_message_bytes: int,
    ) -> None:
        self.subprotocol = subprotocol
        self.headers = list(headers)
        self._stream = stream
        self._conn = conn
        self._max_message_bytes = max_message_bytes
        self._send_lock = trio.StrictFIFOLock()
        self._pending: collections.deque[Event] = collections.deque(conn.events())
        self._parts: list[str] | list[bytes] = []
        self._size = 0
        self._ended: Closed | None = None
        self._broken = False  # a write failed or was cut: no frame may be sent any more

    def call_on_close(self, fn: Callable[[], object]) -> None:
        """A bulkhead slot is held for the handshake only (the socket's own limit is the
        endpoint's ``max_connections``): released at once."""
        fn()

    @property
    def open(self) -> bool:
        """Whether messages may still be sent (no close frame sent or received)."""
        return self._conn.state == ConnectionState.OPEN

    async def _send(self, event: Event) -> bool:
        """Send one event; False when the connection is no longer open for it (closing, or
        lost: the reader learns of a loss too)."""
        async with self._send_lock:
            try:
                data = self._conn.send(event)
            except LocalProtocolError:
                return False
            if self._broken:
                return False
            try:
                await self._stream.send_all(data)
            except _STREAM_ERRORS:
                self._broken = True
                return False
            except BaseException:
                # cancelled midway: part of a frame may have gone, nothing may follow it
                self._broken = True
                raise
        return True

    async def send_message(self, message: str | bytes) -> bool:
        """Send one text (str) or binary (bytes) message; False when it could not go (the
        socket is closing or lost)."""
        if isinstance(message, str):
            return await self._send(TextMessage(data=message))
        return await self._send(BytesMessage(data=message))

    async def ping(self, payload: bytes) -> bool:
        """Send a ping (its pong is dropped when it comes)."""
        return await self._send(Ping(payload=payload))

    @property
    def broken(self) -> bool:
        """Whether a write failed or was cut midway (only dropping the connection is left)."""
        return self._broken

    async def close(self, code: int, reason: str | None = None) -> None:
        """Start the close handshake (RFC 6455 section 7.1.2) with ``code`` (1005: a close
        frame without a code); the upstream's reply comes through :meth:`receive` as
        :class:`Closed`. Nothing is sent when a close frame already went or came."""
        if code == NO_STATUS_RECEIVED:  # wsproto sends no code only for its enum member
            await self._send(CloseConnection(code=CloseReason.NO_STATUS_RCVD))
        else:
            await self._send(CloseConnection(code=code, reason=reason))

    def abort(self) -> None:
        """Close the connection at once, without a close frame (idempotent)."""
        close_now(self._stream)

    async def receive(self) -> Received:
        """The next message, ping or the end of the upstream's side (then :class:`Closed`
        again on every later call)."""
        while True:
            if self._ended is not None:
                return self._ended
            while self._pending:
                received = await self._handle(self._pending.popleft())
                if received is not None:
                    return received
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except _STREAM_ERRORS as exc:
                self._ended = Closed(None, f"connection lost: {exc}")
                continue
            if not data:
                self._ended = Closed(None, "the upstream dropped the connection")
                continue
            try:
                self._conn.receive_data(bytes(data))
                self._pending.extend(self._conn.events())
            except RemoteProtocolError as exc:
                if exc.event_hint is not None:
                    await self._send(exc.event_hint)
                self._ended = Closed(None, f"protocol error: {exc}")

    async def _handle(self, event: Event) -> Received | None:
        if isinstance(event, (TextMessage, BytesMessage)):
            data = event.data  # the limit is in bytes: text counted as UTF-8
            text = isinstance(data, str) and not data.isascii()
            self._size += len(data.encode()) if isinstance(data, str) and text else len(data)
            if self._size > self._max_message_bytes:
                self._parts, self._size = [], 0
                await self._send(CloseConnection(code=MESSAGE_TOO_BIG))
                self._ended = Closed(MESSAGE_TOO_BIG, "upstream message too big")
                return self._ended
            self._parts.append(event.data)  # type: ignore[arg-type]
            if not event.message_finished:
                return None
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(event, TextMessage):
                return "".join(parts)  # type: ignore[arg-type]
            return b"".join(parts)  # type: ignore[arg-type]
        if isinstance(event, Ping):
            await self._send(event.response())
            return Pinged(bytes(event.payload))
        if isinstance(event, CloseConnection):
            state = self._conn.state
            if state == ConnectionState.OPEN:
                # wsproto's verdict on a frame the upstream got wrong (1002, 1007): the
                # upstream is told; the client is not blamed (see code_for_client)
                await self._send(CloseConnection(code=event.code, reason=event.reason))
                self._ended = Closed(None, f"protocol error: {event.reason}")
                return self._ended
            if state == ConnectionState.REMOTE_CLOSING:
                await self._send(event.response())
            self._ended = Closed(int(event.code), event.reason or None)
            return self._ended
        return None  # a pong
