"""hypercorn's WebSocket stream, with what a relay needs and hypercorn 0.18 does not give an
ASGI app.

Written here because hypercorn serves the client side and its ASGI interface has no room
for these; each is a few lines over hypercorn's own ``WSStream`` (the class is replaced in
its protocol modules by :func:`install`, once per process):

- **The client's close code.** hypercorn reports every close by the client as 1000 or
  1006, whatever code the client sent (pgjones/hypercorn#127, open). Here the code and
  reason of the client's close frame reach the app in ``websocket.disconnect`` (``code``,
  and ``reason`` as ASGI 2.4 has it); a connection that dropped without one is still 1006.
- **Pings.** hypercorn answers a client's ping and tells the app nothing, so a client that
  keeps a quiet connection alive with pings would look idle. Here the app also gets
  ``{"type": PING_EVENT, "bytes": payload}`` after the pong is sent, and may send the same
  message to ping the client.
- **A message limit per connection.** hypercorn's ``websocket_max_message_size`` is one
  for the whole server. Here ``websocket.accept`` may carry :data:`MAX_MESSAGE_KEY`, the
  connection's own limit (bytes of one message, all frames); a bigger message is answered
  with a close frame 1009 at once and the app gets ``websocket.disconnect`` 1009, with no
  wait for the client's close reply.
- **A handshake hypercorn cannot decode** (a non-ASCII byte in the path, ``Connection``,
  ``Sec-WebSocket-Protocol`` or ``-Extensions``) would raise out of hypercorn and stop the
  whole server: it is answered 400 ``invalid_header`` (JSON) instead.
- **A client's protocol error** (a bad frame, invalid UTF-8) gets a close frame with
  wsproto's code (1002, 1007) before the connection closes, as RFC 6455 section 7.1.7
  asks; hypercorn drops the connection without one.
- **No permessage-deflate.** hypercorn accepts the extension whenever a client offers it,
  and wsproto inflates a frame whole before any size is checked: a small compressed frame
  could take gigabytes. The offer is ignored (RFC 7692 section 5: a server may decline).

The app learns the stream is this one from ``scope["extensions"]``, which holds
:data:`EXTENSION` (hypercorn's own stream, without it, would refuse the extra messages).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
from typing import Any

import hypercorn.protocol.h2
import hypercorn.protocol.h11
import orjson
import trio
from hypercorn.protocol.events import Body, EndBody, EndData, Request, Response, StreamClosed
from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

EXTENSION = "gateway.websocket"
"""Key of ``scope["extensions"]`` present when the server is this stream."""
PING_EVENT = "gateway.websocket.ping"
"""A ping, received from the client (to the app) or to send to it (from the app)."""
MAX_MESSAGE_KEY = "gateway.max_message_bytes"
"""Key of ``websocket.accept``: the connection's message limit in bytes."""

_MESSAGE_TOO_BIG = 1009
_NO_STATUS = 1005


class RelayStream(WSStream):
    """hypercorn's ``WSStream`` with the client's close code, pings and a limit per
    connection passed to the app (see the module)."""

    # set once the client's side has ended with a code: its close frame's, or 1009
    peer_close: tuple[int, str | None] | None = None
    reported = False
    app_done = False  # the app has returned: nothing is queued for it any more
    limit_bytes: int | None = None  # the connection's message limit, in bytes
    message_bytes = 0  # of the message being assembled

    async def _put(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the app, unless it has returned. hypercorn's queue is
        bounded and never closed: a put after the app stopped reading would wait for
        good, and with it the connection's reader (the socket then stays open)."""
        if self.app_done or self.app_put is None:
            return
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self.app_put(message)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_group = _MarkingTaskGroup(self.task_group)  # type: ignore[assignment]

    async def handle(self, event: Any) -> None:
        if isinstance(event, Request) and not self.closed and _not_ascii(event):
            # hypercorn would fail decoding the handshake fields, and the exception take
            # the whole server down: a client's mistake, answered as one
            await self._refuse_not_ascii()
            return
        if isinstance(event, Request) and not self.closed:
            event = _merged_lists(event)
        if isinstance(event, StreamClosed) and not self.closed and self.app_put is not None:
            self.closed = True
            if not self.reported:
                self.reported = True
                code, reason = self._closing_code()
                await self._put({"type": "websocket.disconnect", "code": code, "reason": reason})
            return
        await super().handle(event)

    async def _refuse_not_ascii(self) -> None:
        body = orjson.dumps(
            {
                "error": {
                    "code": "invalid_header",
                    "message": "a WebSocket handshake field or the path is not ASCII",
                }
            }
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await self.send(Response(stream_id=self.stream_id, status_code=400, headers=headers))
        await self.send(Body(stream_id=self.stream_id, data=body))
        await self.send(EndBody(stream_id=self.stream_id))
        self.closed = True

    def _closing_code(self) -> tuple[int, str | None]:
        if self.peer_close is not None:
            return self.peer_close
        if self.state in {ASGIWebsocketState.HTTPCLOSED, ASGIWebsocketState.CLOSED}:
            return 1000, None  # the app closed first: hypercorn's own answer
        return 1006, None

    async def app_send(self, message: Any) -> None:
        if message is None:  # the app has returned
            self.app_done = True
            channel = getattr(self.app_put, "__self__", None)
            if isinstance(channel, trio.MemorySendChannel):
                channel.close()  # a put waiting on the full queue returns
        if message is not None and not self.closed:
            kind = message["type"]
            if kind == PING_EVENT:
                if self.state == ASGIWebsocketState.CONNECTED:
                    await self._send_wsproto_event(Ping(payload=bytes(message["bytes"])))
                return
            if (
                kind == "websocket.close"
                and message.get("code") == _NO_STATUS
                and self.state == ASGIWebsocketState.CONNECTED
            ):
                # a close frame without a code, as the other side sent (hypercorn would
                # send 1000: wsproto leaves the code out only for its enum member)
                self.state = ASGIWebsocketState.CLOSED
                await self._send_wsproto_event(CloseConnection(code=CloseReason.NO_STATUS_RCVD))
                await self.send(EndData(stream_id=self.stream_id))
                return
            if kind == "websocket.accept" and self.state == ASGIWebsocketState.HANDSHAKE:
                limit = message.get(MAX_MESSAGE_KEY)
                if limit is not None:
                    # counted here in bytes (hypercorn's buffer counts text in characters)
                    self.limit_bytes = int(limit)
                    self.buffer.max_length = math.inf  # type: ignore[assignment]
                self.handshake.extensions = None  # permessage-deflate declined
        await super().app_send(message)

    async def _handle_events(self) -> None:
        assert self.app_put is not None
        for event in self.connection.events():
            if isinstance(event, Message):
                data = event.data
                self.message_bytes += (
                    len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode())
                )
                try:
                    if self.limit_bytes is not None and self.message_bytes > self.limit_bytes:
                        raise FrameTooLargeError
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    self.buffer.clear()
                    self.message_bytes = 0
                    await self._send_wsproto_event(CloseConnection(code=_MESSAGE_TOO_BIG))
                    self.peer_close = (_MESSAGE_TOO_BIG, "message too big")
                    if not self.reported:
                        self.reported = True
                        await self._put(
                            {
                                "type": "websocket.disconnect",
                                "code": _MESSAGE_TOO_BIG,
                                "reason": "message too big",
                            }
                        )
                    break
                if event.message_finished:
                    self.message_bytes = 0
                    await self._put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
                await self._put({"type": PING_EVENT, "bytes": bytes(event.payload)})
            elif isinstance(event, CloseConnection):
                if self.peer_close is None:
                    self.peer_close = (event.code, event.reason or None)
                state = self.connection.state
                if state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                elif state == ConnectionState.OPEN:
                    # wsproto's verdict on a frame the client got wrong (1002, 1007):
                    # the client is told before the connection closes (RFC 6455 7.1.7)
                    await self._send_wsproto_event(
                        CloseConnection(code=event.code, reason=event.reason)
                    )
                # the end of the data: over HTTP/2 the stream's END_STREAM (RFC 8441
                # section 5), which hypercorn leaves out here; nothing over HTTP/1.1
                await self.send(EndData(stream_id=self.stream_id))
                await self.send(StreamClosed(stream_id=self.stream_id))


# the fields hypercorn decodes as ASCII while it reads a handshake
_DECODED_FIELDS = frozenset({b"connection", b"sec-websocket-extensions", b"sec-websocket-protocol"})
_LIST_FIELDS = frozenset({b"sec-websocket-extensions", b"sec-websocket-protocol"})


def _merged_lists(request: Request) -> Request:
    """The request with each list field of the handshake on one line: hypercorn keeps only
    the last line of ``Sec-WebSocket-Protocol`` or ``-Extensions``, where RFC 6455 section
    11.3.4 (and RFC 9110 section 5.3) make several lines one list."""
    seen: dict[bytes, int] = {}
    for name, _ in request.headers:
        lower = name.lower()
        if lower in _LIST_FIELDS:
            seen[lower] = seen.get(lower, 0) + 1
    if all(count == 1 for count in seen.values()):
        return request
    headers: list[tuple[bytes, bytes]] = []
    merged: dict[bytes, int] = {}
    for name, value in request.headers:
        lower = name.lower()
        if lower in _LIST_FIELDS and seen[lower] > 1:
            if lower in merged:
                index = merged[lower]
                headers[index] = (headers[index][0], headers[index][1] + b", " + value)
                continue
            merged[lower] = len(headers)
        headers.append((name, value))
    return dataclasses.replace(request, headers=headers)


def _not_ascii(request: Request) -> bool:
    if not request.raw_path.isascii():
        return True
    return any(
        not value.isascii() for name, value in request.headers if name.lower() in _DECODED_FIELDS
    )


class _MarkingTaskGroup:
    """The connection's task group, marking the scope of the app it starts with
    :data:`EXTENSION` (the scope is built and the app started within hypercorn's
    ``handle``: this is the one place between the two)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def spawn_app(self, app: Any, config: Any, scope: Any, send: Any) -> Any:
        scope["extensions"][EXTENSION] = {}
        return await self._inner.spawn_app(app, config, scope, send)

    def spawn(self, func: Any, *args: Any) -> None:
        self._inner.spawn(func, *args)


_installed = False


def install() -> None:
    """Make hypercorn's HTTP/1.1, HTTP/2 and HTTP/3 protocols serve WebSockets with
    :class:`RelayStream` (idempotent). The scope of each then carries :data:`EXTENSION`."""
    global _installed
    if _installed:
        return
    for module in (hypercorn.protocol.h11, hypercorn.protocol.h2):
        setattr(module, "WSStream", RelayStream)  # noqa: B010 (a module's global)
    try:  # HTTP/3 needs aioquic, an extra of hypercorn's
        h3 = importlib.import_module("hypercorn.protocol.h3")
    except ImportError:
        pass
    else:
        setattr(h3, "WSStream", RelayStream)  # noqa: B010
    _installed = True


def installed() -> bool:
    """Whether :func:`install` has run in this process."""
    return _installed
