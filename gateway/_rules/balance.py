"""Load balancing over an upstream's hosts, with passive outlier ejection (pure).

No I/O and no sleeping: callers pass ``now`` (seconds, any monotonic origin), as for the
breaker in ``_resilience``. The model is Envoy's outlier detection:

- a host that fails ``consecutive_failures`` calls in a row is ejected: :meth:`HostSet.pick`
  skips it for ``ejection_s`` times the number of times it has been ejected, capped at
  ``max_ejection_s``; every ``ejection_s`` it then stays in service takes one off that
  multiplier, so a host that recovered for good is soon treated as new again;
- at most ``max_ejected`` (a share) of the hosts are ejected at once, and never the last one:
  a set with every host failing still sends calls somewhere.

Failures are what the breaker counts (unreachable, timeout, 5xx); cancellation by the
gateway is never reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Balance = Literal["round_robin", "least_outstanding"]


@dataclass(frozen=True)
class OutlierSettings:
    consecutive_failures: int = 5
    ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected: float = 0.5  # share of the hosts


@dataclass(frozen=True)
class HostStatistics:
    host: str
    outstanding: int
    consecutive_failures: int
    ejected: bool
    ejected_for_s: float  # remaining, 0 when in service
    ejections_total: int
    calls_total: int
    failures_total: int


class _Host:
    __slots__ = (
        "calls",
        "consecutive",
        "ejected_until",
        "ejections",
        "failures",
        "multiplier",
        "name",
        "outstanding",
        "returned_at",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.outstanding = 0
        self.consecutive = 0
        self.ejected_until = 0.0  # in service when now >= this
        self.multiplier = 0  # grows with each ejection, decays while in service
        self.returned_at = 0.0
        self.ejections = 0
        self.calls = 0
        self.failures = 0


class HostSet:
    """The hosts of one upstream, shared by every request of a worker.

    Usage per call: ``i = hosts.pick(now)``, ``hosts.started(i)``, then exactly one of
    ``hosts.ended(i, now, failed=...)`` (a verdict) or ``hosts.ended(i, now, None)``
    (cancelled by the gateway: no verdict).
    """

    def __init__(self, names: tuple[str, ...], balance: Balance, outlier: OutlierSettings) -> None:
        if not names:
            raise ValueError("a host set needs at least one host")
        self.balance = balance
        self.outlier = outlier
        self._hosts = [_Host(n) for n in names]
        self._next = 0

    def __len__(self) -> int:
        return len(self._hosts)

    def _in_service(self, host: _Host, now: float) -> bool:
        return now >= host.ejected_until

    def pick(self, now: float, avoid: int | None = None) -> int:
        """The host for the next call: round-robin or fewest outstanding among the hosts in
        service, preferring one other than ``avoid`` (a retry's or hedge's previous host).
        With every host ejected (only possible through expiry races), the one whose
        ejection ends first."""
        hosts = self._hosts
        n = len(hosts)
        candidates = [i for i in range(n) if self._in_service(hosts[i], now)]
        if not candidates:
            return min(range(n), key=lambda i: hosts[i].ejected_until)
        if avoid is not None and len(candidates) > 1 and avoid in candidates:
            candidates.remove(avoid)
        if self.balance == "least_outstanding":
            # ties go round-robin, so equal hosts share the load
            start = self._next
            self._next = (self._next + 1) % n
            return min(candidates, key=lambda i: (hosts[i].outstanding, (i - start) % n))
        for step in range(n):
            i = (self._next + step) % n
            if i in candidates:
                self._next = (i + 1) % n
                return i
        raise AssertionError("unreachable: candidates is not empty")

    def started(self, index: int) -> None:
        host = self._hosts[index]
        host.outstanding += 1
        host.calls += 1

    def ended(self, index: int, now: float, failed: bool | None) -> None:
        """A call to ``index`` ended: failed, succeeded, or (None) cancelled by the gateway."""
        host = self._hosts[index]
        host.outstanding -= 1
        if failed is None:
            return
        self._decay(host, now)
        if not failed:
            host.consecutive = 0
            return
        host.failures += 1
        host.consecutive += 1
        if host.consecutive >= self.outlier.consecutive_failures and self._may_eject(now):
            self._eject(host, now)

    def _may_eject(self, now: float) -> bool:
        n = len(self._hosts)
        ejected = sum(1 for h in self._hosts if not self._in_service(h, now))
        # never the last host in service; at most max_ejected of them (at least one of 2+)
        return ejected + 1 < n and ejected + 1 <= max(1, int(self.outlier.max_ejected * n))

    def _eject(self, host: _Host, now: float) -> None:
        host.multiplier += 1
        duration = min(self.outlier.ejection_s * host.multiplier, self.outlier.max_ejection_s)
        host.ejected_until = now + duration
        host.returned_at = host.ejected_until
        host.consecutive = 0
        host.ejections += 1

    def _decay(self, host: _Host, now: float) -> None:
        """Each ``ejection_s`` in service since the host returned takes one off its
        multiplier."""
        if host.multiplier and now >= host.ejected_until:
            periods = int((now - host.returned_at) / self.outlier.ejection_s)
            if periods:
                host.multiplier = max(0, host.multiplier - periods)
                host.returned_at += periods * self.outlier.ejection_s

    def statistics(self, now: float) -> list[HostStatistics]:
        return [
            HostStatistics(
                h.name,
                h.outstanding,
                h.consecutive,
                not self._in_service(h, now),
                max(0.0, h.ejected_until - now),
                h.ejections,
                h.calls,
                h.failures,
            )
            for h in self._hosts
        ]
