"""Resilience state machines (pure, with an injected clock): circuit breaker, retry budget.

Neither does I/O or sleeps; callers pass ``now`` (seconds, any monotonic origin). Each
exposes a frozen ``statistics()`` snapshot, as trio's synchronisation primitives do.

Cancellation by the gateway itself (a deadline, a failed sibling, a client that left) is
never recorded as a failure: callers simply do not report it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import trio  # only for the bulkhead's CapacityLimiter: state, not I/O

from .balance import HostSet
from .urls import BaseUrl

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerSettings:
    """Either trigger opens the breaker.

    Args:
        consecutive_failures: failures in a row that open it.
        failure_ratio: failed share of the calls in ``window_s`` that opens it, once at
            least ``min_requests`` calls were made in the window.
        window_s: the sliding window for ``failure_ratio``.
        min_requests: calls needed in the window before the ratio counts.
        open_for_s: how long it stays open before letting probes through.
        half_open_requests: probes allowed at once when half-open; all must succeed to close.
    """

    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    window_s: float = 10.0
    min_requests: int = 20
    open_for_s: float = 30.0
    half_open_requests: int = 1


@dataclass(frozen=True)
class BreakerStatistics:
    state: BreakerState
    consecutive_failures: int
    window_requests: int
    window_failures: int
    opened_total: int
    rejected_total: int


class CircuitBreaker:
    """closed -> open (a trigger fires) -> half_open (after ``open_for_s``) -> closed (all
    probes succeeded) or open again (a probe failed)."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._failures_in_window = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._opened_total = 0
        self._rejected_total = 0

    def state(self, now: float) -> BreakerState:
        if self._state == "open" and now - self._opened_at >= self.settings.open_for_s:
            self._state = "half_open"
            self._probes_in_flight = 0
            self._probe_successes = 0
        return self._state

    def allow(self, now: float) -> bool:
        """May a call go out now? A half-open breaker admits a few probes; the caller must
        report each admitted call with :meth:`record` (or :meth:`release` if cancelled)."""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "half_open" and self._probes_in_flight < self.settings.half_open_requests:
            self._probes_in_flight += 1
            return True
        self._rejected_total += 1
        return False

    def release(self, now: float) -> None:
        """An admitted call ended without a verdict (cancelled by the gateway)."""
        if self._state == "half_open" and self._probes_in_flight > 0:
            self._probes_in_flight -= 1

    def record(self, now: float, failed: bool) -> None:
        """Report an admitted call's result."""
        state = self.state(now)
        if state == "half_open":
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if failed:
                self._open(now)
            else:
                self._probe_successes += 1
                if self._probe_successes >= self.settings.half_open_requests:
                    self._close()
            return
        if state == "open":
            return  # a call admitted before it opened: its verdict no longer matters
        self._trim(now)
        self._window.append((now, failed))
        if failed:
            self._failures_in_window += 1
            self._consecutive += 1
        else:
            self._consecutive = 0
        s = self.settings
        if self._consecutive >= s.consecutive_failures or (
            len(self._window) >= s.min_requests
            and self._failures_in_window >= s.failure_ratio * len(self._window)
        ):
            self._open(now)

    def _trim(self, now: float) -> None:
        while self._window and now - self._window[0][0] > self.settings.window_s:
            _, failed = self._window.popleft()
            if failed:
                self._failures_in_window -= 1

    def _open(self, now: float) -> None:
        self._state = "open"
        self._opened_at = now
        self._opened_total += 1
        self._consecutive = 0
        self._window.clear()
        self._failures_in_window = 0

    def _close(self) -> None:
        self._state = "closed"
        self._consecutive = 0
        self._window.clear()
        self._failures_in_window = 0

    def statistics(self, now: float) -> BreakerStatistics:
        state = self.state(now)
        self._trim(now)
        return BreakerStatistics(
            state,
            self._consecutive,
            len(self._window),
            self._failures_in_window,
            self._opened_total,
            self._rejected_total,
        )


@dataclass(frozen=True)
class BudgetStatistics:
    requests_in_flight: int
    retries_in_flight: int
    retries_allowed: int
    retries_total: int
    retries_refused: int


class RetryBudget:
    """Envoy's retry budget: retries in flight may be at most ``ratio`` of the requests in
    flight, but never fewer than ``min_retries`` (so a quiet upstream can still retry).
    Retries cannot multiply an outage."""

    def __init__(self, ratio: float = 0.2, min_retries: int = 3) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self._requests = 0
        self._retries = 0
        self._retries_total = 0
        self._refused = 0

    def request_started(self) -> None:
        self._requests += 1

    def request_ended(self) -> None:
        self._requests -= 1

    def allowed(self) -> int:
        return max(self.min_retries, int(self.ratio * self._requests))

    def try_retry(self) -> bool:
        """Take a retry slot if the budget allows; release it with :meth:`retry_ended`."""
        if self._retries >= self.allowed():
            self._refused += 1
            return False
        self._retries += 1
        self._retries_total += 1
        return True

    def retry_ended(self) -> None:
        self._retries -= 1

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(
            self._requests, self._retries, self.allowed(), self._retries_total, self._refused
        )


@dataclass(frozen=True)
class RetrySettings:
    attempts: int
    backoff_s: float
    on: frozenset[str]
    budget_ratio: float
    unsafe: bool


@dataclass(frozen=True)
class HedgeSettings:
    after_s: float | None  # a fixed delay, or
    percentile: int | None  # a percentile of recent latency
    max_extra: int


MIN_LATENCY_SAMPLES = 20


class LatencyWindow:
    """The last ``size`` successful call durations of an upstream (for ``after: p95``)."""

    def __init__(self, size: int = 256) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def percentile(self, p: int) -> float | None:
        """None until there are enough samples to say anything."""
        if len(self._samples) < MIN_LATENCY_SAMPLES:
            return None
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


@dataclass(frozen=True)
class BulkheadSettings:
    max_concurrent: int
    queue_timeout_s: float


@dataclass(frozen=True)
class GuardSettings:
    """An upstream's (or a backend's own) resilience settings; None: not configured."""

    retry: RetrySettings | None = None
    breaker: BreakerSettings | None = None
    bulkhead: BulkheadSettings | None = None
    hedge: HedgeSettings | None = None

    @property
    def any(self) -> bool:
        return any(s is not None for s in (self.retry, self.breaker, self.bulkhead, self.hedge))


@dataclass
class UpstreamGuard:
    """One upstream's resilience state, shared by every request of a worker.

    A backend with settings of its own gets a guard of its own (:meth:`for_backend`) that
    shares the upstream's retry budget, latency window and hosts.
    """

    settings: GuardSettings
    breaker: CircuitBreaker | None
    budget: RetryBudget
    limiter: trio.CapacityLimiter | None = None  # the bulkhead's slots
    hosts: HostSet | None = None  # with several hosts
    bases: tuple[BaseUrl, ...] = ()  # ... their URLs, in the HostSet's order
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    overloaded_total: int = 0
    hedges_total: int = 0

    @property
    def retry(self) -> RetrySettings | None:
        return self.settings.retry

    @property
    def bulkhead(self) -> BulkheadSettings | None:
        return self.settings.bulkhead

    @property
    def hedge(self) -> HedgeSettings | None:
        return self.settings.hedge

    def hedge_delay(self) -> float | None:
        """When to send a hedge, or None for no hedging (not configured, or a percentile
        without enough samples yet)."""
        if self.hedge is None:
            return None
        if self.hedge.percentile is not None:
            return self.latency.percentile(self.hedge.percentile)
        return self.hedge.after_s

    @classmethod
    def build(
        cls, settings: GuardSettings, hosts: HostSet | None = None, bases: tuple[BaseUrl, ...] = ()
    ) -> UpstreamGuard:
        return cls(
            settings,
            CircuitBreaker(settings.breaker) if settings.breaker else None,
            RetryBudget(settings.retry.budget_ratio if settings.retry else 0.2),
            _limiter(settings.bulkhead),
            hosts,
            bases,
        )

    def for_backend(
        self, settings: GuardSettings, own_breaker: bool, own_bulkhead: bool
    ) -> UpstreamGuard:
        """A backend's guard: its own settings, its own breaker and bulkhead where it set
        them, and this upstream's budget, latency window and hosts."""
        return UpstreamGuard(
            settings,
            (CircuitBreaker(settings.breaker) if settings.breaker else None)
            if own_breaker
            else self.breaker,
            self.budget,
            _limiter(settings.bulkhead) if own_bulkhead else self.limiter,
            self.hosts,
            self.bases,
            self.latency,
        )

    def statistics(self, now: float) -> dict[str, object]:
        bulkhead = None
        if self.limiter is not None:
            stats = self.limiter.statistics()
            bulkhead = {
                "in_flight": stats.borrowed_tokens,
                "waiting": stats.tasks_waiting,
                "max_concurrent": stats.total_tokens,
                "overloaded_total": self.overloaded_total,
            }
        return {
            "circuit_breaker": vars(self.breaker.statistics(now)) if self.breaker else None,
            "retry_budget": vars(self.budget.statistics()),
            "bulkhead": bulkhead,
            "hedges_total": self.hedges_total,
            "hosts": [vars(h) for h in self.hosts.statistics(now)] if self.hosts else None,
        }


def _limiter(bulkhead: BulkheadSettings | None) -> trio.CapacityLimiter | None:
    return trio.CapacityLimiter(bulkhead.max_concurrent) if bulkhead else None
