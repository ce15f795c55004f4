"""The upstream connection pool: bounded, LIFO reuse, expiry, stale-connection handling."""

from __future__ import annotations

import h11
import httpx
import pytest
import trio
from conftest import start_upstream
from upstream import Reply

from gateway import GatewayTransport, PoolLimits
from gateway._transport import _Connection


def client_for(url: str, **limits: float) -> tuple[httpx.AsyncClient, GatewayTransport]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    transport = GatewayTransport({("http", host, int(port)): PoolLimits(**limits)})  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, trust_env=False), transport


async def test_connections_are_bounded_and_calls_wait_for_a_free_one(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={}, delay_s=0.05)})
        client, transport = client_for(up.url, max_connections=3)
        async with client:
            async with trio.open_nursery() as n:
                for _ in range(30):
                    n.start_soon(client.get, up.url + "/x")
            assert up.calls("/x") == 30
            assert up.connections_total == 3
            (stats,) = transport.statistics()
            assert stats.open_connections == stats.idle_connections == 3
            assert stats.connections_reused == 27
        (stats,) = transport.statistics()
        assert stats.open_connections == 0  # closing the client closed the idle ones


async def test_a_waiting_call_is_bounded_by_its_cancel_scope(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/hang": Reply(fault="hang")})
        client, transport = client_for(up.url, max_connections=1)
        async with client, trio.open_nursery() as n:
            n.start_soon(client.get, up.url + "/hang")
            await trio.sleep(0.05)
            with trio.move_on_after(0.1) as scope:
                await client.get(up.url + "/hang")  # waits for the only connection
            assert scope.cancelled_caught
            (stats,) = transport.statistics()
            assert stats.waiting_requests == 0
            n.cancel_scope.cancel()
        (stats,) = transport.statistics()
        assert stats.active_requests == 0
        assert stats.open_connections == 0


async def test_idle_connections_expire(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        client, _ = client_for(up.url, idle_timeout_s=0.1)
        async with client:
            await client.get(up.url + "/x")
            await client.get(up.url + "/x")
            assert up.connections_total == 1
            await trio.sleep(0.2)
            await client.get(up.url + "/x")
            assert up.connections_total == 2


async def serve_then_close_idle(
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answers one request per connection with keep-alive, then closes it silently."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.EndOfMessage):
                break
        data = conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
        await stream.send_all((data or b"") + (conn.send(h11.Data(data=b"{}")) or b""))
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        await stream.aclose()  # no Connection: close announced

    await trio.serve_listeners(handle, listeners)


async def test_an_idle_connection_closed_by_the_upstream_is_not_reused(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        port = await nursery.start(serve_then_close_idle)
        url = f"http://127.0.0.1:{port}"
        client, transport = client_for(url)
        async with client:
            for _ in range(5):
                r = await client.get(url + "/x")
                assert r.json() == {}
                await trio.sleep(0.02)  # the server's FIN arrives
            (stats,) = transport.statistics()
            assert stats.connections_opened == 5
            assert stats.connections_reused == 0


async def test_a_stale_connection_is_retried_once_for_idempotent_requests(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        port = await nursery.start(serve_then_close_idle)
        url = f"http://127.0.0.1:{port}"
        client, transport = client_for(url)
        async with client:
            await client.get(url + "/x")
            pool = transport.pool(("http", "127.0.0.1", port))
            # Defeat the liveness check so the closed connection is handed out, as when
            # the upstream's close crosses our request on the wire.
            monkeypatch.setattr(_Connection, "looks_closed", lambda self: False)
            await trio.sleep(0.05)
            r = await client.get(url + "/x")
            assert r.json() == {}
            assert pool.statistics().connections_opened == 2
            await trio.sleep(0.05)
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(url + "/x", content=b"not idempotent")


async def test_a_response_not_read_to_the_end_closes_its_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/big": Reply(chunks=50, chunk_size=65536)})
        client, transport = client_for(up.url)
        async with client:
            async with client.stream("GET", up.url + "/big") as r:
                async for _ in r.aiter_raw():
                    break
            (stats,) = transport.statistics()
            assert stats.open_connections == 0
            assert stats.active_requests == 0
            with trio.fail_after(2):
                await up.aborted_event.wait()
