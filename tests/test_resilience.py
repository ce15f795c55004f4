"""The circuit breaker and retry budget as pure state machines, on an explicit clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._rules.resilience import BreakerSettings, CircuitBreaker, RetryBudget

FAST = BreakerSettings(
    consecutive_failures=3, failure_ratio=0.5, window_s=10, min_requests=6, open_for_s=30
)


def test_consecutive_failures_open_the_breaker() -> None:
    b = CircuitBreaker(FAST)
    for t in range(3):
        assert b.allow(t)
        b.record(t, failed=True)
    assert b.state(3) == "open"
    assert not b.allow(3)
    assert b.statistics(3).rejected_total == 1


def test_a_success_resets_the_consecutive_count() -> None:
    b = CircuitBreaker(FAST)
    for failed in (True, True, False, True, True):
        b.record(0, failed=failed)
    assert b.state(0) == "closed"


def test_the_failure_ratio_opens_it_only_after_min_requests() -> None:
    b = CircuitBreaker(FAST)
    for failed in (True, False, True, False, True):  # 3 of 5, below min_requests
        b.record(1, failed=failed)
    assert b.state(1) == "closed"
    b.record(1, failed=False)  # 3 of 6 = 50%
    assert b.state(1) == "open"


def test_old_calls_leave_the_window() -> None:
    b = CircuitBreaker(FAST)
    for _ in range(2):
        b.record(0, failed=True)
    b.record(0, failed=False)
    for _ in range(5):
        b.record(20, failed=False)  # the early failures are out of the 10 s window
    stats = b.statistics(20)
    assert stats.window_requests == 5 and stats.window_failures == 0


def test_half_open_probes_decide_between_closing_and_opening_again() -> None:
    b = CircuitBreaker(FAST)
    for _ in range(3):
        b.record(0, failed=True)
    assert not b.allow(29)
    assert b.state(30) == "half_open"
    assert b.allow(30)  # the one probe
    assert not b.allow(30)  # only one at a time
    b.record(30.5, failed=True)
    assert b.state(31) == "open"
    assert b.state(61) == "half_open"
    assert b.allow(61)
    b.record(61.2, failed=False)
    assert b.state(62) == "closed"
    assert b.statistics(62).opened_total == 2


def test_a_cancelled_probe_frees_its_slot() -> None:
    b = CircuitBreaker(FAST)
    for _ in range(3):
        b.record(0, failed=True)
    assert b.allow(30)
    b.release(30.1)
    assert b.allow(30.2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.booleans(), st.booleans()), max_size=60))
def test_the_breaker_never_admits_more_probes_than_configured(
    events: list[tuple[float, bool, bool]],
) -> None:
    b = CircuitBreaker(BreakerSettings(consecutive_failures=2, open_for_s=1, half_open_requests=2))
    now = 0.0
    admitted = 0
    for step, call, failed in events:
        now += step
        if call and b.allow(now):
            admitted += 1
            if b.state(now) == "half_open":
                assert b.statistics(now).state == "half_open"
            b.record(now, failed)
        assert b._probes_in_flight <= 2


def test_the_retry_budget_has_a_floor_and_a_ratio() -> None:
    budget = RetryBudget(ratio=0.2, min_retries=2)
    assert budget.try_retry() and budget.try_retry()
    assert not budget.try_retry()  # floor of 2 with no requests in flight
    for _ in range(20):
        budget.request_started()
    assert budget.allowed() == 4
    assert budget.try_retry() and budget.try_retry()
    assert not budget.try_retry()
    budget.retry_ended()
    assert budget.try_retry()
    stats = budget.statistics()
    assert stats.retries_in_flight == 4 and stats.retries_refused == 2
