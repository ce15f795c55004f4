"""Rate limits (pure, with an injected clock): GCRA decisions, an in-memory limiter, and the
response fields that tell a client about them.

GCRA, the generic cell rate algorithm (ITU-T I.371), keeps one number per key: the
*theoretical arrival time* (TAT), the moment at which the key's bucket would be empty again
if every allowed request had arrived exactly on schedule. With an emission interval
``T = 1 / rate`` and a tolerance of ``burst * T``, a request at ``now`` is allowed when
``max(TAT, now) + T - now <= burst * T``; an allowed request moves the TAT to
``max(TAT, now) + T``, a refused one leaves it alone. Over any window of ``d`` seconds at
most ``burst + rate * d`` requests are allowed, and a fresh key may spend its whole burst
at once.

Time is kept in integer nanoseconds here (``now_s`` is converted once), so a burst spent
at one instant is exact and no rounding drift builds up; the emission interval is rounded
*up* to a whole nanosecond, which can only make a limit stricter. The Redis store runs the
same arithmetic in microseconds inside one Lua script (:mod:`gateway._state.store`).

Nothing here awaits: :meth:`RateLimiter.decide` reads and writes a key's TAT with no
checkpoint in between, so decisions are exact however many trio tasks ask at once.

The response fields follow draft-ietf-httpapi-ratelimit-headers-09:
``RateLimit-Policy: "name";q=100;w=60`` (a quota of ``q`` units per ``w`` seconds) and
``RateLimit: "name";r=42;t=3`` (``r`` units remain, ``t`` seconds until the quota is fully
restored), plus ``Retry-After`` (RFC 9110 section 10.2.3) on a refusal.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass

NS_PER_S = 1_000_000_000
DEFAULT_MAX_KEYS = 100_000

_RATE = re.compile(r"\s*([0-9]+)\s*/\s*(s|min|h)\s*")
_RATE_WINDOWS_S = {"s": 1, "min": 60, "h": 3600}
# Policy windows tried in order when describing a limit as "q units per w seconds".
_POLICY_WINDOWS_S = (1, 60, 3600)


@dataclass(frozen=True)
class Limit:
    """A rate limit: ``rate_per_s`` requests per second on average, at most ``burst`` at once.

    Args:
        rate_per_s: the sustained rate; greater than zero.
        burst: how many requests a key that has been quiet may make at the same instant;
            at least 1.

    Raises:
        ValueError: a rate that is not a positive finite number, or a burst below 1.
    """

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"rate must be a positive number per second, not {self.rate_per_s}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")

    @property
    def interval_ns(self) -> int:
        """The emission interval ``1 / rate``, rounded up to a whole nanosecond."""
        return max(1, math.ceil(NS_PER_S / self.rate_per_s))


@dataclass(frozen=True)
class Decision:
    """The answer for one request.

    Args:
        allowed: may the request go on?
        limit: the burst, the most requests the key may make at once.
        remaining: requests the key may still make right now, after this one (0 when refused).
        reset_s: seconds until the key's whole burst is available again.
        retry_after_s: seconds until a request would be allowed; 0 when allowed.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float


def parse_rate(text: str) -> tuple[int, int]:
    """Parse ``100/s``, ``10/min`` or ``5000/h`` into ``(count, window_s)``.

    Raises:
        ValueError: not a whole positive count, a slash and one of the units s, min, h.
    """
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid rate {text!r}: write a whole count per unit, like 100/s, 10/min or 5000/h"
        )
    count = int(match.group(1))
    if count <= 0:
        raise ValueError(f"invalid rate {text!r}: the count must be greater than zero")
    return count, _RATE_WINDOWS_S[match.group(2)]


def parse_limit(text: str, burst: int | None = None) -> Limit:
    """A :class:`Limit` from a rate like ``10/min``; the burst defaults to the count, so
    ``10/min`` allows ten requests at once and then one every six seconds.

    Raises:
        ValueError: an invalid rate (see :func:`parse_rate`) or burst.
    """
    count, window_s = parse_rate(text)
    return Limit(count / window_s, count if burst is None else burst)


def decide(limit: Limit, tat_ns: int | None, now_s: float) -> tuple[int, Decision]:
    """Decide one request of a key whose stored TAT is ``tat_ns`` (None: a fresh key) at
    ``now_s`` (seconds, any origin shared with the stored TAT).

    Returns:
        The TAT to store (unchanged when the request is refused) and the :class:`Decision`.
    """
    now_ns = round(now_s * NS_PER_S)
    interval = limit.interval_ns
    tolerance = interval * limit.burst
    # A TAT in the past means the bucket is full again: the key is as good as fresh.
    start = now_ns if tat_ns is None or tat_ns < now_ns else tat_ns
    new_tat = start + interval
    if new_tat - now_ns <= tolerance:
        stored, allowed, retry_after_ns = new_tat, True, 0
    else:  # then start == tat_ns: a fresh key is always allowed since burst >= 1
        stored, allowed, retry_after_ns = start, False, new_tat - tolerance - now_ns
    backlog = stored - now_ns
    decision = Decision(
        allowed=allowed,
        limit=limit.burst,
        remaining=max(0, (tolerance - backlog) // interval),
        reset_s=backlog / NS_PER_S,
        retry_after_s=retry_after_ns / NS_PER_S,
    )
    return stored, decision


@dataclass(frozen=True)
class RateLimiterStatistics:
    keys: int
    max_keys: int
    allowed_total: int
    denied_total: int
    evicted_total: int


class RateLimiter:
    """GCRA state for many keys in one process, in a bounded LRU.

    A flood of distinct keys cannot grow memory without bound: past ``max_keys`` the least
    recently used key is dropped, and a dropped key is simply fresh the next time it is
    seen (it may then spend a burst again, which is the price of the bound).

    Args:
        max_keys: the most keys remembered at once.
    """

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.max_keys = max_keys
        self._tats: OrderedDict[str, int] = OrderedDict()
        self._allowed_total = 0
        self._denied_total = 0
        self._evicted_total = 0

    def decide(self, key: str, limit: Limit, now_s: float) -> Decision:
        """Decide one request for ``key`` at ``now_s`` (seconds, any monotonic origin)."""
        tats = self._tats
        stored, decision = decide(limit, tats.get(key), now_s)
        tats[key] = stored
        tats.move_to_end(key)
        while len(tats) > self.max_keys:
            tats.popitem(last=False)
            self._evicted_total += 1
        if decision.allowed:
            self._allowed_total += 1
        else:
            self._denied_total += 1
        return decision

    def __len__(self) -> int:
        return len(self._tats)

    def clear(self) -> None:
        self._tats.clear()

    def statistics(self) -> RateLimiterStatistics:
        return RateLimiterStatistics(
            len(self._tats),
            self.max_keys,
            self._allowed_total,
            self._denied_total,
            self._evicted_total,
        )


# --- Response fields (draft-ietf-httpapi-ratelimit-headers-09) -------------------------


def policy_quota(limit: Limit) -> tuple[int, int]:
    """Describe ``limit`` as ``(q, w)``: a quota of ``q`` requests per ``w`` seconds.

    ``q / w`` is the sustained rate: the first of 1 s, 1 min and 1 h over which the rate is
    a whole number of requests (``100/s`` -> (100, 1), ``10/min`` -> (10, 60),
    ``5000/h`` -> (5000, 3600)); otherwise the hour's count rounded down, so a client
    following the policy never exceeds the limit. The burst is not part of the policy; the
    ``r`` of :func:`format_ratelimit` tells a client how much of it is left.
    """
    rate = limit.rate_per_s
    for window_s in _POLICY_WINDOWS_S:
        quota = rate * window_s
        if quota >= 1 and abs(quota - round(quota)) <= 1e-9 * quota:
            return round(quota), window_s
    last = _POLICY_WINDOWS_S[-1]
    if rate * last >= 1:
        return math.floor(rate * last), last
    return 1, math.ceil(1 / rate)


def _ceil_s(seconds: float) -> int:
    """Whole seconds, rounded up, ignoring the sub-microsecond excess that rounding the
    emission interval up to a nanosecond adds (``1.000000002`` is 1, not 2)."""
    return max(0, math.ceil(seconds - 1e-6))


def _sf_string(name: str) -> str:
    """A structured-field string (RFC 9651 section 3.3.3): printable ASCII, with ``"`` and
    ``\\`` escaped."""
    if any(not (0x20 <= ord(c) <= 0x7E) for c in name):
        raise ValueError(f"a rate limit policy name must be printable ASCII: {name!r}")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_policy(name: str, limit: Limit) -> str:
    """The ``RateLimit-Policy`` field value, e.g. ``"per-client";q=100;w=60``.

    Raises:
        ValueError: ``name`` is not printable ASCII.
    """
    quota, window_s = policy_quota(limit)
    return f"{_sf_string(name)};q={quota};w={window_s}"


def format_ratelimit(name: str, decision: Decision) -> str:
    """The ``RateLimit`` field value, e.g. ``"per-client";r=42;t=3``: ``r`` requests remain
    and the whole burst is back in ``t`` seconds (rounded up).

    Raises:
        ValueError: ``name`` is not printable ASCII.
    """
    return f"{_sf_string(name)};r={decision.remaining};t={_ceil_s(decision.reset_s)}"


def retry_after_s(decision: Decision) -> int:
    """``Retry-After`` in whole seconds: rounded up, and at least 1 (0 would invite an
    immediate retry that is certain to be refused)."""
    return max(1, _ceil_s(decision.retry_after_s))


def ratelimit_headers(name: str, limit: Limit, decision: Decision) -> list[tuple[bytes, bytes]]:
    """The response fields for one decision: ``RateLimit-Policy`` and ``RateLimit``
    always, ``Retry-After`` when the request was refused."""
    headers = [
        (b"ratelimit-policy", format_policy(name, limit).encode("ascii")),
        (b"ratelimit", format_ratelimit(name, decision).encode("ascii")),
    ]
    if not decision.allowed:
        headers.append((b"retry-after", str(retry_after_s(decision)).encode("ascii")))
    return headers
