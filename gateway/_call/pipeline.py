"""The pipeline of one backend call: an ordered stack of layers, each owning one policy.

The order is written once, in :data:`AGGREGATED` and :data:`PASSTHROUGH`, outermost
first::

    cache -> coalescing -> retries (+budget) -> breaker -> hedging -> bulkhead -> host -> exchange

- **cache** (:mod:`.cache`): a stored reply is answered here; nothing below runs, so a hit
  takes no bulkhead slot and the breaker never hears of it.
- **coalescing** (:mod:`.cache`): concurrent identical misses share one upstream request,
  when the reply may be shared.
- **retries**: the upstream's retry budget counts this request in flight; failed attempts
  are retried with jittered exponential backoff while the budget allows.
- **breaker**: each attempt asks the circuit breaker first and reports its verdict: the
  upstream failing (``unreachable``, ``timeout``, ``http_5xx``, or cut by the backend's own
  timeout) or not. Cancellation by the gateway and refusals from the layers below
  (``overloaded``) give no verdict.
- **hedging**: a slow idempotent attempt gets up to ``max`` more in parallel; each counts
  against the retry budget; the first success wins, the rest are cancelled.
- **bulkhead**: every upstream request (each retry, hedge and ``for_each`` element) takes a
  slot of its own, waiting at most ``queue_timeout`` (outcome ``overloaded``).
- **host**: with several hosts, the balancer picks one (another than the previous attempt's)
  and the request is aimed at it (its own ``Host``); its outcome feeds outlier detection.
- **exchange** (:func:`.exchange.exchange`): the upstream request itself.

Passthrough runs the same stack without the layers that need a replayable body or a
buffered reply (cache, coalescing, retries, hedging).

Each layer is a small object with ``send(request) -> Reply``, composed for one backend
call by :func:`compose` (layers that do not apply are left out, so a backend without
policies is just its exchange). Per-call state (the backend's timeout scope, retries,
hedges, the last host) lives in :class:`CallStats`, shared by the layers of the call.
Everything runs in the caller's task or in nurseries the layers open and close, under the
caller's timeout and deadline scopes: no retry or hedge outlives them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Protocol

import trio

from .._config.plan import BackendPlan
from .._rules.aggregate import Outcome
from .._rules.resilience import UpstreamGuard
from .._state.shared import SharedState
from .._upstream.transport import IDEMPOTENT_METHODS
from .cache import Cache, Coalescing
from .exchange import ByteBudget, Reply, Sender, exchange
from .request import UpstreamRequest, with_host


@dataclass
class CallStats:
    """One backend call's state, shared by its layers (and its ``for_each`` requests).

    ``timeout`` is the backend's own timeout scope: an attempt it cuts counts as the
    upstream failing (slow), while cancellation from above (deadline, sibling, client) does
    not. ``retries`` and ``hedges`` are kept here so a call cut by the deadline is still
    reported with them.
    """

    timeout: trio.CancelScope
    retries: int = 0
    hedges: int = 0
    last_host: int | None = None


class Layer(Protocol):
    """One layer of a call's stack (the innermost is the exchange)."""

    def send(self, request: UpstreamRequest) -> Awaitable[Reply]: ...


class AnyLayer(Layer, Protocol):
    """A layer that wraps the next one, when the call needs it."""

    def __init__(self, next: Layer, spec: CallSpec) -> None: ...

    @staticmethod
    def wanted(spec: CallSpec) -> bool: ...


class CallSpec(NamedTuple):
    """What a layer is built from: the backend, its worker-wide state, and the call's
    (a named tuple: built once per backend call, on the hot path)."""

    backend: BackendPlan
    guard: UpstreamGuard | None
    state: SharedState | None
    stats: CallStats
    sender: Sender | None = None  # the exchange's (not passthrough's)
    budget: ByteBudget | None = None


def counts_as_failure(outcome: str) -> bool:
    """What a circuit breaker and outlier detection count: the upstream failing, not the
    client or the gateway."""
    return outcome in (Outcome.UNREACHABLE, Outcome.TIMEOUT) or outcome.startswith("http_5")


# Outcomes of a layer's own refusal: the upstream was not called, so no verdict on it.
NOT_CALLED = frozenset({Outcome.OVERLOADED, Outcome.CIRCUIT_OPEN})


class Exchange:
    """The innermost layer: the upstream request itself."""

    __slots__ = ("backend", "budget", "sender")

    def __init__(self, spec: CallSpec) -> None:
        assert spec.sender is not None and spec.budget is not None
        self.sender = spec.sender
        self.backend = spec.backend
        self.budget = spec.budget

    def send(self, request: UpstreamRequest) -> Awaitable[Reply]:
        return exchange(self.sender, self.backend, self.budget, request)


class _Guarded:
    """A layer that uses the upstream's guard and the call's state."""

    __slots__ = ("guard", "next", "stats")

    def __init__(self, next: Layer, spec: CallSpec) -> None:
        assert spec.guard is not None
        self.next = next
        self.guard = spec.guard
        self.stats = spec.stats


class HostChoice(_Guarded):
    """Several hosts: the balancer's pick (another than the previous attempt's where
    there is one), the request aimed at it, and the verdict for outlier detection."""

    __slots__ = ()

    @staticmethod
    def wanted(spec: CallSpec) -> bool:
        return spec.guard is not None and spec.guard.hosts is not None

    async def send(self, request: UpstreamRequest) -> Reply:
        guard, stats = self.guard, self.stats
        hosts = guard.hosts
        assert hosts is not None
        index = hosts.pick(trio.current_time(), avoid=stats.last_host)
        stats.last_host = index
        base = guard.bases[index]
        hosts.started(index)
        verdict: bool | None = None
        try:
            reply = await self.next.send(with_host(request, base))
            verdict = counts_as_failure(reply.outcome)
            return reply if reply.host else reply.tagged(host=base.origin)
        except BaseException:
            # cut by the backend's own timeout: this host was too slow
            verdict = True if stats.timeout.cancel_called else None
            raise
        finally:
            hosts.ended(index, trio.current_time(), verdict)


class Bulkhead:
    """One slot of the upstream's bulkhead per upstream request, held until its reply is
    complete (for passthrough: until its body is streamed); waits at most the queue
    timeout, then answers ``overloaded``."""

    __slots__ = ("guard", "limiter", "next", "queue_timeout_s")

    def __init__(self, next: Layer, spec: CallSpec) -> None:
        guard = spec.guard
        assert guard is not None and guard.limiter is not None and guard.bulkhead is not None
        self.next = next
        self.guard = guard
        self.limiter = guard.limiter
        self.queue_timeout_s = guard.bulkhead.queue_timeout_s

    @staticmethod
    def wanted(spec: CallSpec) -> bool:
        return spec.guard is not None and spec.guard.limiter is not None

    async def send(self, request: UpstreamRequest) -> Reply:
        # a borrower of its own: one task may hold several slots (a call and its hedges
        # share none), and a passthrough body may be streamed from another task
        borrower = object()
        limiter = self.limiter
        acquired = False
        with trio.move_on_after(self.queue_timeout_s):
            await limiter.acquire_on_behalf_of(borrower)
            acquired = True
        if not acquired:
            self.guard.overloaded_total += 1
            return Reply(Outcome.OVERLOADED, detail="bulkhead full")
        held = True
        try:
            reply = await self.next.send(request)
            if reply.stream is not None:  # passthrough: held until the body is done
                reply.stream.call_on_close(partial(limiter.release_on_behalf_of, borrower))
                held = False
            return reply
        finally:
            if held:
                limiter.release_on_behalf_of(borrower)


class Breaker:
    """Asks the circuit breaker before the attempt and reports the attempt's verdict."""

    __slots__ = ("breaker", "next", "stats")

    def __init__(self, next: Layer, spec: CallSpec) -> None:
        assert spec.guard is not None and spec.guard.breaker is not None
        self.next = next
        self.breaker = spec.guard.breaker
        self.stats = spec.stats

    @staticmethod
    def wanted(spec: CallSpec) -> bool:
        return spec.guard is not None and spec.guard.breaker is not None

    async def send(self, request: UpstreamRequest) -> Reply:
        breaker = self.breaker
        if not breaker.allow(trio.current_time()):
            return Reply(Outcome.CIRCUIT_OPEN, detail="circuit breaker open")
        try:
            reply = await self.next.send(request)
        except BaseException:
            if self.stats.timeout.cancel_called:  # the backend's own timeout: too slow
                breaker.record(trio.current_time(), failed=True)
            else:  # cancelled by the gateway: no verdict
                breaker.release(trio.current_time())
            raise
        if reply.outcome in NOT_CALLED:
            breaker.release(trio.current_time())
        else:
            breaker.record(trio.current_time(), counts_as_failure(reply.outcome))
        return reply


class Hedging(_Guarded):
    """Delayed hedging of idempotent requests: if no answer came after the hedge delay,
    send another (up to ``max``), each against the retry budget; the first success wins
    and the rest are cancelled, which closes their connections. Successful attempts feed
    the upstream's latency window (for ``after: pNN``)."""

    __slots__ = ()

    @staticmethod
    def wanted(spec: CallSpec) -> bool:
        return spec.guard is not None and spec.guard.hedge is not None

    async def _timed(self, request: UpstreamRequest) -> Reply:
        start = trio.current_time()
        reply = await self.next.send(request)
        if reply.outcome == Outcome.OK:
            self.guard.latency.add(trio.current_time() - start)
        return reply

    async def send(self, request: UpstreamRequest) -> Reply:
        guard = self.guard
        hedge = guard.hedge
        delay = guard.hedge_delay()
        if hedge is None or delay is None or request.method not in IDEMPOTENT_METHODS:
            return await self._timed(request)
        replies: list[Reply] = []
        winner: Reply | None = None
        first_done = trio.Event()

        async def one(is_hedge: bool, nursery: trio.Nursery) -> None:
            nonlocal winner
            try:
                reply = await self._timed(request)
            finally:
                if is_hedge:
                    guard.budget.retry_ended()
            replies.append(reply)
            first_done.set()
            if reply.outcome == Outcome.OK and winner is None:
                winner = reply
                nursery.cancel_scope.cancel()  # the slower calls no longer matter

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, False, nursery)
            for _ in range(hedge.max_extra):
                with trio.move_on_after(delay):
                    await first_done.wait()
                if first_done.is_set() or not guard.budget.try_retry():
                    break
                guard.hedges_total += 1
                self.stats.hedges += 1
                nursery.start_soon(one, True, nursery)
            # wait for a success or for every call to end
        return winner if winner is not None else replies[0]


class Retries(_Guarded):
    """The retry budget counts this request while it is in flight; a failed attempt whose
    outcome is in ``retries.on`` is retried (idempotent methods, or every method with
    ``unsafe``) after a jittered exponential backoff, while the budget allows."""

    __slots__ = ()

    @staticmethod
    def wanted(spec: CallSpec) -> bool:
        return spec.guard is not None

    async def send(self, request: UpstreamRequest) -> Reply:
        guard = self.guard
        retry = guard.retry
        budget = guard.budget
        retryable = retry is not None and (request.method in IDEMPOTENT_METHODS or retry.unsafe)
        budget.request_started()
        try:
            reply = await self.next.send(request)
            if not retryable:
                return reply
            assert retry is not None
            for attempt in range(retry.attempts):
                if reply.outcome not in retry.on:
                    return reply
                await trio.sleep(retry.backoff_s * (2**attempt) * random.uniform(0.5, 1.5))
                if not budget.try_retry():
                    return reply
                self.stats.retries += 1
                try:
                    retried = await self.next.send(request)
                finally:
                    budget.retry_ended()
                if retried.outcome in NOT_CALLED:  # refused below: the failure stands
                    return reply
                reply = retried
            return reply
        finally:
            budget.request_ended()


AGGREGATED: tuple[type[AnyLayer], ...] = (
    Cache,
    Coalescing,
    Retries,
    Breaker,
    Hedging,
    Bulkhead,
    HostChoice,
)
"""The layers of an aggregated backend call, outermost first (the module docstring
says why this order)."""

PASSTHROUGH: tuple[type[AnyLayer], ...] = (Breaker, Bulkhead, HostChoice)
"""The layers of a passthrough call, outermost first: no cache, coalescing, retries or
hedging, which need a replayable body or a buffered reply."""


def compose(spec: CallSpec, order: Sequence[type[AnyLayer]], innermost: Layer) -> Layer:
    """The call's stack: ``innermost`` wrapped in every layer of ``order`` that applies
    to it (``wanted``), so the first of ``order`` is the outermost."""
    if spec.guard is None and spec.backend.cache is None:
        return innermost  # no policy at all (every layer needs a guard or a cache)
    layer = innermost
    for kind in reversed(order):
        if kind.wanted(spec):
            layer = kind(layer, spec)
    return layer
