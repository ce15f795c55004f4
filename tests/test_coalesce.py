"""Request coalescing: one execution for concurrent identical calls, with no background
tasks, and a follower taking over when the leader's caller leaves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from gateway._state.coalesce import Coalescer


class Upstream:
    """A call that counts its executions and blocks until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = trio.Event()

    async def fetch(self) -> dict[str, int]:
        self.calls += 1
        await self.release.wait()
        return {"call": self.calls}


async def gather(
    nursery: trio.Nursery,
    coalescer: Coalescer[dict[str, int]],
    fn: Callable[[], Awaitable[dict[str, int]]],
    count: int,
    key: str = "k",
) -> list[object]:
    """Start ``count`` callers; their results (or exceptions) land in the returned list."""
    results: list[object] = []

    async def caller() -> None:
        try:
            results.append(await coalescer.run(key, fn))
        except Exception as exc:
            results.append(exc)

    for _ in range(count):
        nursery.start_soon(caller)
    return results


async def test_a_hundred_concurrent_identical_calls_run_once() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    upstream = Upstream()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            results = await gather(nursery, coalescer, upstream.fetch, 100)
            await trio.testing.wait_all_tasks_blocked()
            assert coalescer.statistics().waiting == 99
            upstream.release.set()
    assert upstream.calls == 1
    assert len(results) == 100 and all(r is results[0] for r in results)
    stats = coalescer.statistics()
    assert (stats.leaders_total, stats.followers_total, stats.takeovers_total) == (1, 99, 0)
    assert (stats.in_flight, stats.waiting, len(coalescer)) == (0, 0, 0)


async def test_different_keys_do_not_wait_for_each_other() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    upstream = Upstream()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            a = await gather(nursery, coalescer, upstream.fetch, 3, key="a")
            b = await gather(nursery, coalescer, upstream.fetch, 3, key="b")
            await trio.testing.wait_all_tasks_blocked()
            assert len(coalescer) == 2
            upstream.release.set()
    assert upstream.calls == 2
    assert a[0] is not b[0]


async def test_a_call_after_the_outcome_runs_again() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    upstream = Upstream()
    upstream.release.set()
    with trio.fail_after(5):
        first = await coalescer.run("k", upstream.fetch)
        second = await coalescer.run("k", upstream.fetch)
    assert (first, second) == ({"call": 1}, {"call": 2})


async def test_when_the_leader_is_cancelled_a_follower_takes_over() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    upstream = Upstream()
    leader_scope = trio.CancelScope()
    leader_outcome: list[str] = []

    async def leader() -> None:
        with leader_scope:
            await coalescer.run("k", upstream.fetch)
        leader_outcome.append("cancelled" if leader_scope.cancelled_caught else "finished")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.testing.wait_all_tasks_blocked()
            followers = await gather(nursery, coalescer, upstream.fetch, 5)
            await trio.testing.wait_all_tasks_blocked()
            assert upstream.calls == 1
            leader_scope.cancel()  # the leader's client left
            await trio.testing.wait_all_tasks_blocked()
            assert upstream.calls == 2  # one follower runs the call itself
            stats = coalescer.statistics()
            assert (stats.takeovers_total, stats.in_flight, stats.waiting) == (1, 1, 4)
            upstream.release.set()
    assert leader_outcome == ["cancelled"]
    assert followers == [{"call": 2}] * 5
    assert len(coalescer) == 0


async def test_takeovers_continue_until_someone_finishes() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    upstream = Upstream()
    scopes: dict[trio.lowlevel.Task, trio.CancelScope] = {}
    running: list[trio.lowlevel.Task] = []
    outcomes: list[object] = []

    async def fetch() -> dict[str, int]:
        running.append(trio.lowlevel.current_task())
        return await upstream.fetch()

    async def caller() -> None:
        with trio.CancelScope() as scope:
            scopes[trio.lowlevel.current_task()] = scope
            outcomes.append(await coalescer.run("k", fetch))
        if scope.cancelled_caught:
            outcomes.append("cancelled")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            for expected_calls in (2, 3):
                scopes[running[-1]].cancel()  # whoever runs the call now leaves
                await trio.testing.wait_all_tasks_blocked()
                assert upstream.calls == expected_calls
            upstream.release.set()
    assert outcomes == ["cancelled", "cancelled", {"call": 3}]
    assert len(set(running)) == 3
    assert coalescer.statistics().takeovers_total == 2
    assert len(coalescer) == 0


async def test_a_cancelled_follower_just_leaves() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    upstream = Upstream()
    follower_scope = trio.CancelScope()

    async def follower() -> None:
        with follower_scope:
            await coalescer.run("k", upstream.fetch)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            results = await gather(nursery, coalescer, upstream.fetch, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(follower)
            await trio.testing.wait_all_tasks_blocked()
            assert coalescer.statistics().waiting == 1
            follower_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert coalescer.statistics().waiting == 0
            upstream.release.set()
    assert follower_scope.cancelled_caught
    assert results == [{"call": 1}] and upstream.calls == 1
    assert len(coalescer) == 0


async def test_a_cancelled_leader_without_followers_leaves_no_key() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    upstream = Upstream()
    with trio.fail_after(5), trio.move_on_after(0.01):
        await coalescer.run("k", upstream.fetch)
    assert len(coalescer) == 0
    upstream.release.set()
    assert await coalescer.run("k", upstream.fetch) == {"call": 2}


async def test_followers_cancelled_after_the_leader_left_leave_no_key() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    upstream = Upstream()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(coalescer.run, "k", upstream.fetch)
            await trio.testing.wait_all_tasks_blocked()
            await gather(nursery, coalescer, upstream.fetch, 3)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # leader and followers leave together
    assert upstream.calls == 1  # nobody was left to take over
    assert len(coalescer) == 0 and coalescer.statistics().waiting == 0


async def test_an_exception_reaches_the_leader_and_every_follower() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    release = trio.Event()
    calls = 0

    async def failing() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()
        raise LookupError("upstream said no")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            results = await gather(nursery, coalescer, failing, 10)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert calls == 1
    assert len(results) == 10 and all(r is results[0] for r in results)
    assert isinstance(results[0], LookupError)
    assert len(coalescer) == 0


async def test_a_follower_sees_the_leaders_traceback() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    release = trio.Event()

    async def failing() -> dict[str, int]:
        await release.wait()
        raise LookupError("upstream said no")

    caught: list[BaseException] = []

    async def follower() -> None:
        with pytest.raises(LookupError) as info:
            await coalescer.run("k", failing)
        caught.append(info.value)
        names = [frame.name for frame in info.traceback]
        assert "failing" in names  # the frame that raised, in the leader's task

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await gather(nursery, coalescer, failing, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(follower)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert len(caught) == 1


async def test_an_exception_is_not_remembered() -> None:
    coalescer: Coalescer[dict[str, int]] = Coalescer()
    attempts = 0

    async def flaky() -> dict[str, int]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("first attempt fails")
        return {"attempt": attempts}

    with trio.fail_after(5):
        with pytest.raises(ConnectionError):
            await coalescer.run("k", flaky)
        assert await coalescer.run("k", flaky) == {"attempt": 2}
    assert len(coalescer) == 0
