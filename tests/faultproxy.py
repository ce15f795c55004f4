"""A fault-injecting TCP proxy for tests, on trio (and h11 to read requests).

It sits between the gateway and a real upstream (``tests/upstream.py``) and decides, for
every connection it accepts, what to do to it::

    proxy: FaultProxy = await nursery.start(serve_fault_proxy, upstream)
    proxy.plan.extend([reset(), hang()])      # the next two connections, in order
    proxy.choose = lambda conn_id: garbage()  # every later one (default: passthrough())
    ...                                        # point the gateway at proxy.url

Faults that answer in the upstream's place read one request and never connect to it:

- ``hang()``: never answer; the connection stays open until the client closes it (or
  the proxy is cancelled);
- ``reset()``: close with SO_LINGER (on, 0), so the client gets a TCP RST;
- ``garbage()``: send bytes that are not HTTP, then close;
- ``oversize(n_bytes)``: a valid 200 response whose JSON body (one string) is
  ``n_bytes`` long, sent as fast as the client reads;
- ``invalid_json()``: a valid 200 ``application/json`` response whose body is not JSON.

The proxy closes the connection after each of these (the two valid responses say
``Connection: close``). The other faults connect to the upstream and forward bytes both
ways, changing only responses:

- ``passthrough()``: nothing;
- ``latency(seconds)``: wait before forwarding each response (on kept-alive
  connections too);
- ``trickle(bytes_per_chunk, interval_s)``: forward responses in small pieces, waiting
  ``interval_s`` before each;
- ``close_mid_body()``: forward the first response's head and half its body (the
  upstream must send a Content-Length, as ``tests/upstream.py`` does for JSON), then
  close both connections.

``refusing_url()`` is an address where connecting is refused.

The proxy counts connections accepted (``connections_total``) and open
(``connections_open``; ``await proxy.wait_open(n)`` waits until at most ``n`` are), and
records the fault each connection got in ``faults``. Every task it runs lives in the
nursery it was started in; cancelling that nursery closes every connection.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import h11
import trio

__all__ = [
    "Fault",
    "FaultProxy",
    "close_mid_body",
    "garbage",
    "hang",
    "invalid_json",
    "latency",
    "oversize",
    "passthrough",
    "refusing_url",
    "reset",
    "serve_fault_proxy",
    "trickle",
]

RECEIVE_BYTES: Final = 64 * 1024
_LINGER_RST: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, timeout 0: close sends RST
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

Kind = Literal[
    "passthrough",
    "latency",
    "trickle",
    "close_mid_body",
    "hang",
    "reset",
    "garbage",
    "oversize",
    "invalid_json",
]


@dataclass(frozen=True)
class Fault:
    """What happens to one connection; made by the functions below."""

    kind: Kind
    seconds: float = 0.0  # latency; trickle: the wait before each piece
    size: int = 0  # trickle: bytes per piece; oversize: body bytes

    def __str__(self) -> str:
        return self.kind


def passthrough() -> Fault:
    return Fault("passthrough")


def latency(seconds: float) -> Fault:
    return Fault("latency", seconds=seconds)


def trickle(bytes_per_chunk: int, interval_s: float) -> Fault:
    if bytes_per_chunk < 1:
        raise ValueError("bytes_per_chunk must be at least 1")
    return Fault("trickle", seconds=interval_s, size=bytes_per_chunk)


def close_mid_body() -> Fault:
    return Fault("close_mid_body")


def hang() -> Fault:
    return Fault("hang")


def reset() -> Fault:
    return Fault("reset")


def garbage() -> Fault:
    return Fault("garbage")


def oversize(n_bytes: int) -> Fault:
    if n_bytes < 2:
        raise ValueError("a JSON string needs at least 2 bytes")
    return Fault("oversize", size=n_bytes)


def invalid_json() -> Fault:
    return Fault("invalid_json")


def refusing_url() -> str:
    """``http://127.0.0.1:PORT`` where connecting is refused: the port was bound, then
    closed, and nothing listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class FaultProxy:
    """A running proxy; its state is changed only from trio tasks."""

    def __init__(self, host: str, port: int, target: tuple[str, int]) -> None:
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.target = target
        self.plan: deque[Fault] = deque()  # consumed first, one per accepted connection
        self.choose: Callable[[int], Fault] = lambda conn_id: passthrough()
        self.faults: list[Fault] = []  # what each accepted connection got, in order
        self.connections_total = 0
        self.connections_open = 0
        self._changed = trio.lowlevel.ParkingLot()

    def next_fault(self, conn_id: int) -> Fault:
        return self.plan.popleft() if self.plan else self.choose(conn_id)

    async def wait_open(self, at_most: int = 0) -> None:
        """Return once at most ``at_most`` connections are open."""
        while self.connections_open > at_most:
            await self._changed.park()

    def _count(self, delta: int) -> None:
        self.connections_open += delta
        self._changed.unpark_all()


class Address(Protocol):
    """Where the proxy forwards to: an ``Upstream`` from ``tests/upstream.py``."""

    host: str
    port: int


async def serve_fault_proxy(
    target: Address,
    *,
    task_status: trio.TaskStatus[FaultProxy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Proxy 127.0.0.1:<ephemeral port> to ``target`` until cancelled; reports a
    ``FaultProxy``."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=1024)
    host, port = listener.socket.getsockname()[:2]
    proxy = FaultProxy(host, port, (target.host, target.port))
    async with listener, trio.open_nursery() as nursery:
        task_status.started(proxy)
        while True:
            try:
                client = await listener.accept()
            except OSError:  # e.g. EMFILE: back off instead of dying
                await trio.sleep(0.01)
                continue
            proxy.connections_total += 1
            fault = proxy.next_fault(proxy.connections_total)
            proxy.faults.append(fault)
            proxy._count(+1)
            nursery.start_soon(_serve_connection, proxy, client, fault)


async def _serve_connection(proxy: FaultProxy, client: trio.SocketStream, fault: Fault) -> None:
    try:
        await _HANDLERS[fault.kind](proxy, client, fault)
    except (*_STREAM_ERRORS, h11.ProtocolError):
        pass  # the client or the upstream went away, or sent something broken
    finally:
        await trio.aclose_forcefully(client)
        proxy._count(-1)


# -- faults that answer in the upstream's place ---------------------------------------


async def _read_request(client: trio.SocketStream) -> bool:
    """Read one whole request; False if the client closed first."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await client.receive_some(RECEIVE_BYTES))
        elif isinstance(event, h11.EndOfMessage):
            return True
        elif isinstance(event, h11.ConnectionClosed):
            return False


def _response_head(length: int) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % length
    )


async def _hang(proxy: FaultProxy, client: trio.SocketStream, fault: Fault) -> None:
    if await _read_request(client):
        while await client.receive_some(RECEIVE_BYTES):
            pass  # never answer; return when the client closes


async def _reset(proxy: FaultProxy, client: trio.SocketStream, fault: Fault) -> None:
    await _read_request(client)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


async def _garbage(proxy: FaultProxy, client: trio.SocketStream, fault: Fault) -> None:
    if await _read_request(client):
        await client.send_all(b"\x00\xffthis is not HTTP at all\r\n\r\n")


async def _oversize(proxy: FaultProxy, client: trio.SocketStream, fault: Fault) -> None:
    if not await _read_request(client):
        return
    await client.send_all(_response_head(fault.size) + b'"')
    left = fault.size - 2
    piece = b"x" * RECEIVE_BYTES
    while left > 0:
        await client.send_all(piece[: min(left, len(piece))])
        left -= len(piece)
    await client.send_all(b'"')


async def _invalid_json(proxy: FaultProxy, client: trio.SocketStream, fault: Fault) -> None:
    if await _read_request(client):
        body = b"{this is not json"
        await client.send_all(_response_head(len(body)) + body)


# -- faults that forward to the upstream ----------------------------------------------


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


async def _close_mid_body(upstream: trio.SocketStream, client: trio.SocketStream) -> None:
    """Forward the first response's head and half its body, then return (to close)."""
    buffer = b""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            length = _content_length(buffer[:end]) or 0
            if len(buffer) - end - 4 >= length:
                break
        data = await upstream.receive_some(RECEIVE_BYTES)
        if not data:
            return
        buffer += data
    await client.send_all(buffer[: end + 4 + length // 2])


async def _forward(proxy: FaultProxy, client: trio.SocketStream, fault: Fault) -> None:
    upstream = await trio.open_tcp_stream(*proxy.target)
    awaiting_response = False  # a request went up; its response has not started yet

    async def up(done: trio.CancelScope) -> None:
        nonlocal awaiting_response
        try:
            while data := await client.receive_some(RECEIVE_BYTES):
                awaiting_response = True
                await upstream.send_all(data)
        except _STREAM_ERRORS:
            pass
        finally:
            done.cancel()

    async def down(done: trio.CancelScope) -> None:
        nonlocal awaiting_response
        try:
            if fault.kind == "close_mid_body":
                await _close_mid_body(upstream, client)
                return
            while data := await upstream.receive_some(RECEIVE_BYTES):
                if awaiting_response and fault.kind == "latency":
                    await trio.sleep(fault.seconds)
                awaiting_response = False
                if fault.kind == "trickle":
                    for start in range(0, len(data), fault.size):
                        await trio.sleep(fault.seconds)
                        await client.send_all(data[start : start + fault.size])
                else:
                    await client.send_all(data)
        except _STREAM_ERRORS:
            pass
        finally:
            done.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(up, nursery.cancel_scope)
            nursery.start_soon(down, nursery.cancel_scope)
    finally:
        await trio.aclose_forcefully(upstream)


_Handler = Callable[[FaultProxy, trio.SocketStream, Fault], Awaitable[None]]
_HANDLERS: Final[dict[str, _Handler]] = {
    "passthrough": _forward,
    "latency": _forward,
    "trickle": _forward,
    "close_mid_body": _forward,
    "hang": _hang,
    "reset": _reset,
    "garbage": _garbage,
    "oversize": _oversize,
    "invalid_json": _invalid_json,
}
