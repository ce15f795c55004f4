"""Plain-TCP upstream connections: a non-blocking socket driven with trio's
``wait_readable``/``wait_writable``.

``trio.SocketStream`` is general: each ``send_all`` and ``receive_some`` enters a conflict
detector and an error-translating context manager, checkpoints twice and, on receive,
tries the ``recv`` before waiting (an HTTP response is never there right after its
request is sent, so that ``recv`` always fails). For the pool's strictly alternating
use (one request written, then its response read) that measured as a seventh of the
gateway's CPU per upstream call. This stream does the minimum:

- ``send_all`` writes at once and only waits when the socket buffer is full; it does not
  yield when the kernel takes everything (the ``receive_some`` that follows is the
  checkpoint), but it does not send at all in an already cancelled scope;
- ``receive_some`` waits for readability first, then reads once;
- ``aclose`` tells trio the socket is closing before closing it.

Errors are ``OSError`` as the socket raises them. TLS connections keep using
``trio.SSLStream`` over ``trio.SocketStream``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from typing import Any

import trio


class PlainStream:
    """One connected TCP socket (TCP_NODELAY set); not for concurrent use."""

    __slots__ = ("socket",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self.socket
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            view = view[sent:]

    async def receive_some(self, max_bytes: int) -> bytes:
        sock = self.socket
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:  # woken without data after all
                continue

    def close(self) -> None:
        if self.socket.fileno() >= 0:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def _ip_family(host: str) -> socket.AddressFamily | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


async def connect_plain(host: str, port: int) -> PlainStream:
    """Connect to ``host:port``. An IP address is connected to directly; a name goes
    through ``trio.open_tcp_stream`` (resolution, happy eyeballs) and its socket is taken
    over.

    Raises:
        OSError: the connection failed.
    """
    family = _ip_family(host)
    if family is None:
        stream = await trio.open_tcp_stream(host, port)
        return PlainStream(socket.socket(fileno=stream.socket.detach()))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect((host, port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"connect to {host}:{port}: {os.strerror(error)}") from None
        else:
            await trio.lowlevel.checkpoint()
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return PlainStream(sock)


def close_now(stream: Any) -> None:
    """Close a connection without awaiting (safe in cancelled scopes and ``finally``
    blocks): a :class:`PlainStream`, a ``trio.SocketStream`` or a ``trio.SSLStream`` over
    one (its socket: no TLS close_notify). An already broken socket is no error."""
    with contextlib.suppress(OSError):
        if isinstance(stream, PlainStream):
            stream.close()
        else:
            getattr(stream, "transport_stream", stream).socket.close()
