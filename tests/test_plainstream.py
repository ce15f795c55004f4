"""The plain-TCP stream under upstream connections, against real sockets on loopback."""

from __future__ import annotations

import socket

import pytest
import trio

from gateway._upstream.plainstream import PlainStream, connect_plain


async def _echo_server(
    task_status: trio.TaskStatus[tuple[int, list[bytes]]] = trio.TASK_STATUS_IGNORED,
    *,
    delay_s: float = 0.0,
) -> None:
    """Accepts connections; echoes what it reads (after ``delay_s``), records it."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    received: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        await trio.sleep(delay_s)
        async for data in stream:
            received.append(data)
            await stream.send_all(data)

    port = listeners[0].socket.getsockname()[1]
    task_status.started((port, received))
    await trio.serve_listeners(handle, listeners)


async def test_round_trip_by_address_and_by_name() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port, _ = await nursery.start(_echo_server)
            for host in ("127.0.0.1", "localhost"):
                stream = await connect_plain(host, port)
                assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                await stream.send_all(b"ping")
                assert await stream.receive_some(100) == b"ping"
                await stream.aclose()
                assert stream.socket.fileno() == -1
            nursery.cancel_scope.cancel()


async def test_refused_connection_raises_oserror() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(5), pytest.raises(OSError, match="Connection refused"):
        await connect_plain("127.0.0.1", port)


async def test_large_send_waits_for_a_slow_reader() -> None:
    data = bytes(range(256)) * 40_000  # 10 MB: far beyond the socket buffers
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, received = await nursery.start(
                lambda task_status: _echo_server(task_status, delay_s=0.2)
            )
            stream = await connect_plain("127.0.0.1", port)
            echoed = bytearray()
            all_back = trio.Event()

            async def read_back() -> None:
                while len(echoed) < len(data):
                    echoed.extend(await stream.receive_some(65536))
                all_back.set()

            nursery.start_soon(read_back)
            await stream.send_all(data)
            await all_back.wait()
            assert bytes(echoed) == data
            assert b"".join(received) == data
            stream.close()
            nursery.cancel_scope.cancel()


async def test_cancelled_scope_sends_nothing_and_receive_is_cancellable() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port, received = await nursery.start(_echo_server)
            stream = await connect_plain("127.0.0.1", port)
            with trio.CancelScope() as scope:
                scope.cancel()
                await stream.send_all(b"never")
            assert scope.cancelled_caught
            with trio.move_on_after(0.05) as waited:
                await stream.receive_some(100)  # nothing was sent: nothing comes back
            assert waited.cancelled_caught
            await trio.sleep(0.05)
            assert received == []
            stream.close()
            stream.close()  # closing twice is harmless
            nursery.cancel_scope.cancel()


async def test_plain_stream_takes_over_a_blocking_socket() -> None:
    with socket.socket() as sock:
        stream = PlainStream(sock)
        assert not sock.getblocking()
        stream.close()
        assert sock.fileno() == -1
