"""Bounded writes to clients: hypercorn's trio TCP server, extended so that a client that
stops reading cannot hold a task, a drain or a forced stop forever.

hypercorn 0.18 writes each piece of output (a response chunk, an event of a stream, a
WebSocket frame) inside a shielded cancel scope with no deadline, so that a cancelled task
never leaves half a frame on a connection. A client that stops reading then holds the
writing task for good: no timeout reaches it, and neither does the end of a drain or a
second signal (seen: a client that never read an event stream kept ``gateway serve``
running 60 s after SIGTERM, and a second SIGTERM did not stop it). Here, per server
(:func:`bound_sends`, keyed by its hypercorn config):

- each write still runs shielded, but ends by ``server.send_timeout``: a client whose
  socket buffers stay full that long is too slow, or gone;
- once a drain has given in-flight work its ``graceful_timeout``, every write, current or
  later, ends by then (:meth:`SendBounds.end_all_by`); a forced stop ends them at once;
- a write cut that way leaves part of a piece on the connection, which is then useless:
  it is closed at once and the protocol told, so the request's or socket's task learns
  that its client has gone.

Shielded until then, still: a task cancelled for another reason (its client reset one
HTTP/2 stream) must not cut a frame in half on a connection other streams share.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Any

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer

from ._upstream.plainstream import close_now


class SendBounds:
    """The write bounds of one server: ``timeout_s`` per write, and ``end_by`` (trio time)
    for all of them."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.end_by = math.inf
        self.active: set[trio.CancelScope] = set()

    def deadline(self) -> float:
        """The deadline of a write starting now."""
        return min(trio.current_time() + self.timeout_s, self.end_by)

    def end_all_by(self, deadline: float) -> None:
        """Make every write, current or later, end by ``deadline`` (trio time)."""
        self.end_by = min(self.end_by, deadline)
        for scope in self.active:
            scope.deadline = min(scope.deadline, deadline)


_BOUNDS: weakref.WeakKeyDictionary[Any, SendBounds] = weakref.WeakKeyDictionary()


def bound_sends(config: Any, timeout_s: float) -> SendBounds:
    """The bounds of the server serving with hypercorn ``config`` (made on first use; a
    later call sets ``timeout_s``, as a reload does). Installs the extension."""
    install()
    bounds = _BOUNDS.get(config)
    if bounds is None:
        bounds = _BOUNDS[config] = SendBounds(timeout_s)
    bounds.timeout_s = timeout_s
    return bounds


def bounds_of(config: Any) -> SendBounds | None:
    """The bounds registered for ``config``, if any."""
    return _BOUNDS.get(config)


_original_send = TCPServer.protocol_send
_original_close = TCPServer._close


async def _protocol_send(self: TCPServer, event: Any) -> None:
    bounds = _BOUNDS.get(self.config)
    if bounds is None or not isinstance(event, RawData):
        await _original_send(self, event)
        return
    stalled = False
    async with self.send_lock:
        try:
            with trio.CancelScope(shield=True, deadline=bounds.deadline()) as scope:
                bounds.active.add(scope)
                try:
                    await self.stream.send_all(event.data)
                finally:
                    bounds.active.discard(scope)
            stalled = scope.cancelled_caught
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
            return
    if stalled:
        close_now(self.stream)
        await self.protocol.handle(Closed())


async def _close(self: TCPServer) -> None:
    with contextlib.suppress(trio.ClosedResourceError):  # closed after a stalled write
        await _original_close(self)


_installed = False


def install() -> None:
    """Replace ``TCPServer.protocol_send`` and ``_close`` (idempotent). Servers without
    bounds (:func:`bound_sends` not called for their config) write as hypercorn does."""
    global _installed
    if not _installed:
        TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]
        TCPServer._close = _close  # type: ignore[method-assign]
        _installed = True
