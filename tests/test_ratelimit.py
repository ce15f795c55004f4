"""GCRA rate limits as pure functions of an explicit clock, and their response fields."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._state.limiter import (
    Decision,
    Limit,
    RateLimiter,
    decide,
    format_policy,
    format_ratelimit,
    parse_limit,
    parse_rate,
    policy_quota,
    ratelimit_headers,
    retry_after_s,
)


def run(limit: Limit, times: list[float]) -> list[Decision]:
    tat: int | None = None
    decisions = []
    for now in times:
        tat, decision = decide(limit, tat, now)
        decisions.append(decision)
    return decisions


@pytest.mark.parametrize(
    ("text", "count", "window_s"),
    [("100/s", 100, 1), ("10/min", 10, 60), ("5000/h", 5000, 3600), (" 7 / min ", 7, 60)],
)
def test_a_rate_parses_to_a_count_per_window(text: str, count: int, window_s: int) -> None:
    assert parse_rate(text) == (count, window_s)


@pytest.mark.parametrize(
    "text", ["100", "100/ms", "10/m", "1.5/s", "-1/s", "/s", "10/day", "\u0661\u0660/s"]
)
def test_a_malformed_rate_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(text)


def test_a_zero_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_rate("0/s")


def test_the_burst_defaults_to_the_count_of_one_window() -> None:
    assert parse_limit("10/min") == Limit(10 / 60, 10)
    assert parse_limit("10/min", burst=2) == Limit(10 / 60, 2)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (math.nan, 1), (1, 0)])
def test_an_impossible_limit_is_rejected(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Limit(rate, burst)


def test_a_fresh_key_spends_exactly_its_burst_at_one_instant() -> None:
    decisions = run(Limit(10, 5), [1000.0] * 8)
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0, 0]


def test_a_refused_request_says_when_to_retry_and_then_is_allowed() -> None:
    limit = Limit(2, 1)  # one every 0.5 s
    tat, first = decide(limit, None, 10.0)
    tat, refused = decide(limit, tat, 10.1)
    assert first.allowed and not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.4)
    assert refused.reset_s == pytest.approx(0.4)
    _, later = decide(limit, tat, 10.1 + refused.retry_after_s)
    assert later.allowed


def test_a_refused_request_does_not_move_the_schedule() -> None:
    limit = Limit(1, 1)
    tat, _ = decide(limit, None, 0.0)
    for now in (0.1, 0.5, 0.9):
        new_tat, decision = decide(limit, tat, now)
        assert not decision.allowed and new_tat == tat
    assert decide(limit, tat, 1.0)[1].allowed


def test_a_key_quiet_long_enough_has_its_whole_burst_back() -> None:
    limit = Limit(10, 5)
    decisions = run(limit, [0.0] * 5 + [0.5] + [0.5] * 4)
    assert decisions[4].reset_s == pytest.approx(0.5)
    assert [d.allowed for d in decisions[5:]] == [True] * 5


def test_requests_spaced_at_the_rate_are_always_allowed() -> None:
    limit = Limit(3, 1)  # the interval is rounded up to 333_333_334 ns: allow for that
    times = [1000 + i * (1 / 3 + 1e-8) for i in range(1000)]
    assert all(d.allowed for d in run(limit, times))


@st.composite
def limits_and_times(draw: st.DrawFn) -> tuple[Limit, list[float]]:
    rate = draw(st.floats(min_value=0.1, max_value=1000, allow_nan=False))
    burst = draw(st.integers(min_value=1, max_value=20))
    # Gaps of any length, and gaps just around whole emission intervals, where an
    # off-by-a-little limit would let one request too many through.
    near_interval = st.builds(
        lambda k, e: max(0.0, (k + e) / rate),
        st.integers(min_value=0, max_value=3),
        st.floats(min_value=-0.02, max_value=0.02),
    )
    gaps = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(min_value=0, max_value=3 / rate), near_interval),
            min_size=1,
            max_size=120,
        )
    )
    start = draw(st.floats(min_value=0, max_value=1e6))
    times, now = [], start
    for gap in gaps:
        now += gap
        times.append(now)
    return Limit(rate, burst), times


@settings(max_examples=300, deadline=None)
@given(limits_and_times())
def test_no_window_ever_allows_more_than_burst_plus_rate_times_its_length(
    case: tuple[Limit, list[float]],
) -> None:
    limit, times = case
    allowed = [t for t, d in zip(times, run(limit, times), strict=True) if d.allowed]
    for i, first in enumerate(allowed):
        for j in range(i, len(allowed)):
            count = j - i + 1
            assert count <= limit.burst + limit.rate_per_s * (allowed[j] - first) + 1e-6


@settings(max_examples=200, deadline=None)
@given(limits_and_times())
def test_retry_after_is_exactly_when_the_next_request_is_allowed(
    case: tuple[Limit, list[float]],
) -> None:
    limit, times = case
    tat: int | None = None
    for now in times:
        tat, decision = decide(limit, tat, now)
        if not decision.allowed:
            assert tat is not None
            wait = decision.retry_after_s
            assert wait > 0
            assert not decide(limit, tat, now + wait - 1e-6)[1].allowed
            assert decide(limit, tat, now + wait + 1e-6)[1].allowed


@settings(max_examples=200, deadline=None)
@given(limits_and_times())
def test_remaining_is_how_many_more_are_allowed_at_the_same_instant(
    case: tuple[Limit, list[float]],
) -> None:
    limit, times = case
    tat: int | None = None
    for now in times:
        tat, decision = decide(limit, tat, now)
        probe, extra = tat, 0
        while True:
            probe, more = decide(limit, probe, now)
            if not more.allowed:
                break
            extra += 1
        assert extra == decision.remaining


def test_the_limiter_keeps_keys_apart() -> None:
    limiter = RateLimiter()
    limit = Limit(1, 1)
    assert limiter.decide("a", limit, 0.0).allowed
    assert not limiter.decide("a", limit, 0.0).allowed
    assert limiter.decide("b", limit, 0.0).allowed
    stats = limiter.statistics()
    assert (stats.keys, stats.allowed_total, stats.denied_total) == (2, 2, 1)


def test_a_flood_of_distinct_keys_stays_within_max_keys() -> None:
    limiter = RateLimiter(max_keys=100)
    limit = Limit(1, 1)
    for i in range(10_000):
        limiter.decide(f"client-{i}", limit, 0.0)
    stats = limiter.statistics()
    assert len(limiter) == stats.keys == 100
    assert stats.evicted_total == 9_900


def test_the_least_recently_used_key_is_evicted_and_then_is_fresh() -> None:
    limiter = RateLimiter(max_keys=2)
    limit = Limit(1, 1)
    limiter.decide("old", limit, 0.0)
    limiter.decide("busy", limit, 0.0)
    limiter.decide("busy", limit, 0.0)  # "busy" is now the most recently used
    limiter.decide("new", limit, 0.0)  # evicts "old"
    assert not limiter.decide("busy", limit, 0.0).allowed  # kept its state
    assert limiter.decide("old", limit, 0.0).allowed  # forgotten: fresh again


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100/s", (100, 1)), ("10/min", (10, 60)), ("5000/h", (5000, 3600)), ("90/min", (90, 60))],
)
def test_the_policy_describes_the_sustained_rate(text: str, expected: tuple[int, int]) -> None:
    assert policy_quota(parse_limit(text)) == expected


def test_an_irregular_rate_is_rounded_down_never_up() -> None:
    assert policy_quota(Limit(1 / 7, 1)) == (514, 3600)  # 514.28... per hour
    assert policy_quota(Limit(1 / 86400, 1)) == (1, 86400)


def test_policy_and_ratelimit_fields_follow_the_draft() -> None:
    limit = parse_limit("100/s")
    _, decision = decide(limit, None, 0.0)
    assert format_policy("per-client", limit) == '"per-client";q=100;w=1'
    assert format_ratelimit("per-client", decision) == '"per-client";r=99;t=1'


def test_the_ratelimit_reset_rounds_up_to_whole_seconds() -> None:
    limit = Limit(1 / 60, 10)  # 10/min
    _, decision = decide(limit, None, 0.0)
    assert format_ratelimit("p", decision) == '"p";r=9;t=60'
    decision = Decision(True, 10, 9, 0.2, 0.0)
    assert format_ratelimit("p", decision) == '"p";r=9;t=1'


def test_a_policy_name_is_a_quoted_structured_field_string() -> None:
    assert format_policy('a "b" \\c', Limit(1, 1)) == '"a \\"b\\" \\\\c";q=1;w=1'
    with pytest.raises(ValueError, match="printable ASCII"):
        format_policy("caf\u00e9", Limit(1, 1))
    with pytest.raises(ValueError, match="printable ASCII"):
        format_policy("a\nb", Limit(1, 1))


@pytest.mark.parametrize(
    ("wait_s", "header"), [(0.0, 1), (0.001, 1), (1.0, 1), (1.2, 2), (59.5, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    wait_s: float, header: int
) -> None:
    assert retry_after_s(Decision(False, 1, 0, wait_s, wait_s)) == header


def test_retry_after_is_sent_only_with_a_refusal() -> None:
    limit = Limit(1, 1)
    tat, allowed = decide(limit, None, 0.0)
    _, refused = decide(limit, tat, 0.25)
    assert [name for name, _ in ratelimit_headers("p", limit, allowed)] == [
        b"ratelimit-policy",
        b"ratelimit",
    ]
    assert ratelimit_headers("p", limit, refused) == [
        (b"ratelimit-policy", b'"p";q=1;w=1'),
        (b"ratelimit", b'"p";r=0;t=1'),
        (b"retry-after", b"1"),
    ]
