"""Cancellation is the normal path: siblings stop, sockets close, nothing leaks."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import httpx
import trio
from conftest import Gateway, backend_config, simple_config, start_gateway, start_upstream
from upstream import Reply


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def settled(condition: Callable[[], bool], timeout_s: float) -> None:
    """Wait until ``condition`` holds, or ``timeout_s`` passed (the caller then asserts)."""
    with trio.move_on_after(timeout_s):
        while not condition():
            gc.collect()
            await trio.sleep(0.05)


def task_names() -> list[str]:
    """The name of every task in this trio run, the root first."""
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


def count_tasks() -> int:
    return len(task_names())


def client_connections() -> int:
    """Connections the servers of this test still serve: one handler task each
    (``trio.serve_listeners`` names them ``_run_handler``)."""
    return sum(name.endswith("._run_handler") for name in task_names())


async def connections_closed() -> None:
    """Wait until the servers have noticed that every client closed its connection.

    How long that takes depends on the machine's load, so the caller's ``fail_after``
    bounds it rather than a guessed sleep."""
    while client_connections():
        gc.collect()
        await trio.sleep(0.02)


async def test_failed_required_backend_cancels_siblings_and_closes_their_sockets(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/fail": Reply(status=500), "/hang": Reply(fault="hang")}
        )
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [
                    backend_config("main", "u", "/fail", required=True),
                    backend_config("side", "u", "/hang", timeout="5s"),
                ],
                deadline="5s",
            ),
        )
        start = trio.current_time()
        r = await gw.get("/api/1")
        elapsed = trio.current_time() - start
        assert r.status_code == 502
        assert r.json()["backends"] == {"main": "http_500", "side": "cancelled"}
        assert elapsed < 1.0
        with trio.fail_after(1):
            await up.aborted_event.wait()  # the upstream saw the cancelled call's close
        assert up.aborted == ["/hang"]


async def test_deadline_answers_at_the_deadline_with_what_finished(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/fast": Reply(json={"a": 1}), "/slow": Reply(json={"b": 2}, delay_s=3)}
        )
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [
                    backend_config("fast", "u", "/fast"),
                    backend_config("slow", "u", "/slow", timeout="5s", default={"b": None}),
                ],
                deadline="300ms",
            ),
        )
        start = trio.current_time()
        r = await gw.get("/api/1")
        elapsed = trio.current_time() - start
        assert r.status_code == 200
        assert r.headers["x-gateway-backends"] == "fast=ok, slow=timeout"
        assert r.headers["x-gateway-complete"] == "false"
        assert r.json() == {"a": 1, "b": None}
        assert 0.28 <= elapsed < 0.6, elapsed
        with trio.fail_after(1):
            await up.aborted_event.wait()
        assert up.aborted == ["/slow"]


async def test_client_disconnect_cancels_every_upstream_call(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/a": Reply(fault="hang"), "/b": Reply(fault="hang")})
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [
                    backend_config("a", "u", "/a", timeout="5s"),
                    backend_config("b", "u", "/b", timeout="5s"),
                ],
                deadline="5s",
            ),
        )
        with trio.move_on_after(0.3):
            await gw.get("/api/1")  # the client gives up and closes its connection
        with trio.fail_after(2):
            while len(up.aborted) < 2:
                await up.aborted_event.wait()
                up.reset_events()
        assert sorted(up.aborted) == ["/a", "/b"]
        stats = gw.app.client._transport.statistics()  # type: ignore[attr-defined]
        assert all(s.active_requests == 0 and s.open_connections == 0 for s in stats)


async def _hammer(gw: Gateway, paths: list[str], total: int, concurrency: int) -> None:
    """``total`` requests, ``concurrency`` at a time; some abandoned by the client."""
    done = 0

    async def worker(index: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(trust_env=False) as client:
            while done < total:
                done += 1
                path = paths[done % len(paths)]
                if done % 7 == 0:
                    with trio.move_on_after(0.005):  # client leaves mid-request
                        await client.get(gw.url + path)
                else:
                    r = await client.get(gw.url + path)
                    assert r.status_code in (200, 502, 504)

    async with trio.open_nursery() as n:
        for i in range(concurrency):
            n.start_soon(worker, i)


async def test_thousands_of_failed_and_cancelled_requests_leak_nothing(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(120):
        up = await start_upstream(
            nursery,
            {
                "/ok": Reply(json={"x": 1}),
                "/hang": Reply(fault="hang"),
                "/reset": Reply(fault="reset"),
                "/500": Reply(status=500),
                "/garbage": Reply(fault="garbage"),
            },
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("ok", "u", "/ok"),
                backend_config("hang", "u", "/hang"),
                backend_config("reset", "u", "/reset"),
            ],
            deadline="20ms",
        )
        config["endpoints"].append(
            {
                "path": "/req/{id}",
                "backends": [
                    backend_config("bad", "u", "/500", required=True),
                    backend_config("hang", "u", "/hang"),
                    backend_config("garbage", "u", "/garbage"),
                ],
            }
        )
        gw = await start_gateway(nursery, config)
        paths = ["/api/1", "/req/1"]
        await _hammer(gw, paths, 300, 20)  # warm up: imports, caches, pools
        # the baseline is taken once the server has closed every warm-up connection: a
        # connection still open here would be counted as if it belonged to the baseline
        await connections_closed()
        gc.collect()
        fds, tasks = open_fds(), count_tasks()

        await _hammer(gw, paths, 1000, 40)
        await connections_closed()
        gc.collect()
        # memory: the allocator's high-water mark settles in the first thousand requests;
        # a leak keeps growing with every further one
        rss = rss_bytes()
        await _hammer(gw, paths, 2000, 40)
        # the server closes the clients' connections as it notices them: wait for that
        # (on a loaded machine it takes longer), then check that nothing is left over
        await connections_closed()
        await settled(lambda: open_fds() <= fds + 5 and count_tasks() <= tasks + 2, 10)
        gc.collect()

        assert open_fds() <= fds + 5, (fds, open_fds())
        assert count_tasks() <= tasks + 2, (tasks, task_names())
        assert rss_bytes() - rss < 12 * 1024 * 1024, (rss, rss_bytes())
        for stats in gw.app.client._transport.statistics():  # type: ignore[attr-defined]
            assert stats.active_requests == 0
            assert stats.waiting_requests == 0
            assert stats.open_connections == stats.idle_connections
        # the hanging upstream saw every abandoned call closed
        assert up.connections_open <= 5
