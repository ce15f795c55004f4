"""The host balancer and its outlier ejection (pure, with an explicit clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway._rules.balance import HostSet, OutlierSettings


def hosts(n: int = 3, balance: str = "round_robin", **outlier: float) -> HostSet:
    return HostSet(tuple(f"h{i}" for i in range(n)), balance, OutlierSettings(**outlier))  # type: ignore[arg-type]


def call(hs: HostSet, now: float, failed: bool | None, avoid: int | None = None) -> int:
    index = hs.pick(now, avoid)
    hs.started(index)
    hs.ended(index, now, failed)
    return index


def test_round_robin_cycles_and_avoids_the_previous_host() -> None:
    hs = hosts(3)
    assert [call(hs, 0, False) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert hs.pick(0, avoid=0) == 1
    assert hosts(1).pick(0, avoid=0) == 0  # nowhere else to go


def test_least_outstanding_prefers_idle_hosts() -> None:
    hs = hosts(3, "least_outstanding")
    busy = hs.pick(0)
    hs.started(busy)
    hs.started(busy)
    picks = set()
    for _ in range(4):
        index = hs.pick(0)
        picks.add(index)
        assert index != busy
    assert len(picks) == 2  # ties are shared, not always the first


def test_ejection_grows_with_each_ejection_and_decays_in_service() -> None:
    hs = hosts(2, consecutive_failures=2, ejection_s=10, max_ejection_s=25)
    now = 0.0
    for expected in (10, 20, 25):  # linear growth, capped
        for _ in range(2):
            hs.started(0)
            hs.ended(0, now, True)
        stats = hs.statistics(now)[0]
        assert stats.ejected and stats.ejected_for_s == expected
        assert all(hs.pick(now + 0.5) == 1 for _ in range(3))  # skipped while ejected
        now += expected
        assert not hs.statistics(now)[0].ejected
    # in service for long enough: the multiplier decays back to 0
    hs.started(0)
    hs.ended(0, now + 35, False)
    for _ in range(2):
        hs.started(0)
        hs.ended(0, now + 35, True)
    assert hs.statistics(now + 35)[0].ejected_for_s == 10


def test_a_success_resets_the_consecutive_count() -> None:
    hs = hosts(2, consecutive_failures=3)
    for failed in (True, True, False, True, True):
        hs.started(0)
        hs.ended(0, 0, failed)
    assert not hs.statistics(0)[0].ejected
    assert hs.statistics(0)[0].consecutive_failures == 2


def test_cancelled_calls_are_no_verdict() -> None:
    hs = hosts(2, consecutive_failures=1)
    hs.started(0)
    hs.ended(0, 0, None)
    stats = hs.statistics(0)[0]
    assert (stats.outstanding, stats.failures_total, stats.ejected) == (0, 0, False)


def test_max_ejected_share_is_respected() -> None:
    hs = hosts(4, consecutive_failures=1, max_ejected=0.5)
    for index in range(4):
        hs.started(index)
        hs.ended(index, 0, True)
    assert sum(s.ejected for s in hs.statistics(0)) == 2


@given(
    st.integers(1, 5),
    st.lists(st.tuples(st.booleans(), st.floats(0, 5), st.sampled_from([True, False, None]))),
    st.sampled_from(["round_robin", "least_outstanding"]),
    st.floats(0.1, 1.0),
)
def test_some_host_is_always_in_service(
    n: int, steps: list[tuple[bool, float, bool | None]], balance: str, share: float
) -> None:
    hs = hosts(n, balance, consecutive_failures=1, ejection_s=3, max_ejected=share)
    now = 0.0
    for _, advance, failed in steps:
        now += advance
        index = hs.pick(now)
        assert 0 <= index < n
        assert not hs.statistics(now)[index].ejected
        hs.started(index)
        hs.ended(index, now, failed)
        assert any(not s.ejected for s in hs.statistics(now))
        assert all(s.outstanding == 0 for s in hs.statistics(now))
