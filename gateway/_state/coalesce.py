"""Request coalescing: concurrent identical calls share one execution.

``await coalescer.run(key, fn)``: the first caller for a key, the *leader*, runs
``await fn()`` in its own task; callers that arrive with the same key while it runs, the
*followers*, wait and get the leader's outcome. There are no background tasks: ``fn``
always runs in the task of a caller that is still waiting for it, under that caller's own
deadlines and cancel scopes.

Outcomes:

- a returned value is given to the leader and to every follower (the same object: treat
  it as immutable);
- an :class:`Exception` raised by ``fn`` is an outcome too: the leader gets it as raised,
  each follower gets the same exception object re-raised with the leader's traceback (as
  an awaited asyncio future does). ``ExceptionGroup`` included;
- anything else (``trio.Cancelled``, ``KeyboardInterrupt``, a ``BaseExceptionGroup``)
  means the leader gave up, usually because its client left or its deadline passed. That
  is not the followers' failure: one waiting follower takes over and runs ``fn`` itself,
  the others keep waiting for it. If no follower is waiting, the key is dropped.

A cancelled follower simply leaves. Keys are removed as soon as an outcome is known, so
nothing is cached and nothing leaks: a call that starts after an outcome runs ``fn`` anew.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar, cast

import trio

T = TypeVar("T")


@dataclass(frozen=True)
class CoalescerStatistics:
    """Args:
    leaders_total: calls that ran ``fn`` because no call for their key was in flight.
    followers_total: calls that joined one in flight.
    takeovers_total: followers that ran ``fn`` after their leader gave up.
    in_flight: keys with a call in flight now.
    waiting: followers waiting now.
    """

    leaders_total: int
    followers_total: int
    takeovers_total: int
    in_flight: int
    waiting: int


class _Flight:
    """One key's call in flight. ``changed`` is set when an outcome is known or when the
    leader gave up; a follower that takes over replaces it with a fresh event."""

    __slots__ = ("changed", "done", "error", "has_leader", "traceback", "value", "waiting")

    def __init__(self) -> None:
        self.changed = trio.Event()
        self.has_leader = True
        self.waiting = 0
        self.done = False
        self.value: object = None
        self.error: Exception | None = None
        self.traceback: TracebackType | None = None


class Coalescer(Generic[T]):
    """Coalesces concurrent calls with equal keys (see the module docstring)."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}
        self._leaders_total = 0
        self._followers_total = 0
        self._takeovers_total = 0
        self._waiting = 0

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` for ``key``, or wait for the call already in flight for it.

        Raises:
            Exception: whatever ``fn`` raised, in the leader and in every follower.
        """
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            self._leaders_total += 1
            return await self._lead(key, flight, fn)
        self._followers_total += 1
        return await self._follow(key, flight, fn)

    async def _lead(self, key: Hashable, flight: _Flight, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await fn()
        except Exception as exc:
            flight.error, flight.traceback = exc, exc.__traceback__
            self._finish(key, flight)
            raise
        except BaseException:
            flight.has_leader = False
            if flight.waiting == 0:
                self._drop(key, flight)
            flight.changed.set()
            raise
        flight.value = value
        self._finish(key, flight)
        return value

    async def _follow(self, key: Hashable, flight: _Flight, fn: Callable[[], Awaitable[T]]) -> T:
        flight.waiting += 1
        self._waiting += 1
        waiting = True
        try:
            while True:
                await flight.changed.wait()
                if flight.done:
                    if flight.error is not None:
                        raise flight.error.with_traceback(flight.traceback)
                    return cast(T, flight.value)
                if not flight.has_leader:
                    # The leader gave up and this task runs first: it takes over. No
                    # checkpoint between the check and the claim, so only one does.
                    flight.has_leader = True
                    flight.changed = trio.Event()
                    flight.waiting -= 1
                    self._waiting -= 1
                    waiting = False
                    self._takeovers_total += 1
                    return await self._lead(key, flight, fn)
                # Another follower took over first: wait for its outcome instead.
        finally:
            if waiting:
                flight.waiting -= 1
                self._waiting -= 1
                if not flight.has_leader and flight.waiting == 0:
                    self._drop(key, flight)

    def _finish(self, key: Hashable, flight: _Flight) -> None:
        flight.done = True
        self._drop(key, flight)
        flight.changed.set()

    def _drop(self, key: Hashable, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def __len__(self) -> int:
        """Keys with a call in flight."""
        return len(self._flights)

    def statistics(self) -> CoalescerStatistics:
        return CoalescerStatistics(
            self._leaders_total,
            self._followers_total,
            self._takeovers_total,
            len(self._flights),
            self._waiting,
        )
