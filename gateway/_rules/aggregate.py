"""Outcomes, merging and the status rules of an aggregated response (pure).

The fan-out (``_fanout``) produces one :class:`BackendResult` per backend, in config
order; :func:`aggregate` turns them into the status, headers and JSON body. Merge order is
the config order, never arrival order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .cachecontrol import NO_STORE, VALIDATOR_FIELDS, combine_cache_control, is_freshness_field
from .transform import JSON, SelectMissing

# RFC 9111 section 5.2.2.5, on every response that is not a complete 200.
NO_STORE_FIELD = (NO_STORE[0].decode("latin-1"), NO_STORE[1].decode("latin-1"))


class Outcome:
    """How a backend call ended. ``http_<status>`` is made by :func:`http_outcome`."""

    OK: Final = "ok"
    TIMEOUT: Final = "timeout"
    UNREACHABLE: Final = "unreachable"
    INVALID_RESPONSE: Final = "invalid_response"
    TOO_LARGE: Final = "too_large"
    CANCELLED: Final = "cancelled"
    INTERNAL_ERROR: Final = "internal_error"
    INVALID_REFERENCE: Final = "invalid_reference"
    DEPENDENCY_FAILED: Final = "dependency_failed"
    OVERLOADED: Final = "overloaded"
    """The upstream's bulkhead had no free slot within its queue timeout."""
    CIRCUIT_OPEN: Final = "circuit_open"
    """The upstream's circuit breaker is open: not called."""
    SKIPPED: Final = "skipped"
    """Not called because its ``when:`` condition (or a dependency's) did not hold.
    Not a failure: left out of the body, the response stays complete."""
    GRAPHQL_ERROR: Final = "graphql_error"
    """A GraphQL backend's response carried ``errors`` (with or without ``data``)."""


def http_outcome(status: int) -> str:
    return f"http_{status}"


@dataclass(frozen=True)
class Placement:
    """Where a backend's result goes in the merged body (compiled from the config)."""

    name: str
    required: bool
    group: str | None
    has_default: bool
    default: JSON = None


@dataclass(frozen=True)
class BackendResult:
    """One backend's end: its outcome, its shaped value when ``ok``, and its duration."""

    outcome: str
    value: JSON = None
    duration_s: float = 0.0
    detail: str = ""
    selected: JSON = None  # after ``select``, before other transforms: what references see
    headers: tuple[tuple[str, str], ...] = ()  # the backend's ``return_headers`` found
    started_s: float = 0.0  # since the request started
    retries: int = 0  # retry attempts made (after the first)
    hedges: int = 0  # hedged calls sent
    # "hit" (from the cache), "coalesced" (shared another call's answer) or
    # "not-stored-authorization" (the client's Authorization kept it out of the cache)
    cache: str = ""
    host: str = ""  # with several hosts: the origin of the last attempt
    # whether its reply may be given to other clients: an answer made of one that may not
    # is kept by no cache, whether or not its headers are returned
    shareable: bool = True
    # a GraphQL response's errors (outcome graphql_error), for debug output only: the
    # upstream's own words never go to the logs
    errors: JSON = None

    @property
    def ok(self) -> bool:
        """Not a failure: ``ok`` or ``skipped``."""
        return self.outcome in (Outcome.OK, Outcome.SKIPPED)


@dataclass(frozen=True)
class Aggregate:
    """The response to send: status, whether every backend succeeded, and the body."""

    status: int
    complete: bool
    body: JSON  # an object, unless the endpoint's shape selects something else
    backends_header: str
    headers: tuple[tuple[str, str], ...] = ()  # returned by backends, merged in config order


def merge(placements: Sequence[Placement], results: Sequence[BackendResult]) -> dict[str, Any]:
    """Merge results in config order (see the module docstring of the config reference).

    A result with ``group`` goes under that key (objects sharing a group merge, later keys
    winning); an object without ``group`` merges at the top level; any other value without
    ``group`` goes under the backend's name. A failed backend contributes its ``default``,
    if it has one, else nothing. Values are never mutated; objects are copied only where two
    merge.
    """
    body: dict[str, Any] = {}
    for place, result in zip(placements, results, strict=True):
        if result.outcome == Outcome.OK:
            value = result.value
        elif result.outcome == Outcome.SKIPPED:
            continue
        elif place.has_default:
            value = place.default
        else:
            continue
        if place.group is not None:
            existing = body.get(place.group)
            if isinstance(existing, dict) and isinstance(value, dict):
                body[place.group] = {**existing, **value}
            else:
                body[place.group] = value
        elif isinstance(value, dict):
            body.update(value)
        else:
            body[place.name] = value
    return body


def backends_header(placements: Sequence[Placement], results: Sequence[BackendResult]) -> str:
    """``profile=ok, orders=timeout;retries=2`` in config order (retries and hedges made
    are added where not zero)."""
    return ", ".join(
        f"{p.name}={r.outcome}{_counts(r)}" for p, r in zip(placements, results, strict=True)
    )


def _counts(result: BackendResult) -> str:
    """``;retries=N;hedges=N;cache=hit`` where there is something to say."""
    if not (result.retries or result.hedges or result.cache):
        return ""
    out = f";retries={result.retries}" if result.retries else ""
    out += f";hedges={result.hedges}" if result.hedges else ""
    return out + (f";cache={result.cache}" if result.cache else "")


BodyBuilder = Callable[[Sequence[Placement], Sequence[BackendResult]], JSON]
"""Builds the body of a 200 in place of :func:`merge` (an endpoint's collections plan).

Raises:
    SelectMissing: the endpoint's ``shape.select`` found nothing.
"""


def aggregate(
    placements: Sequence[Placement],
    results: Sequence[BackendResult],
    failed_required: int | None = None,
    build: BodyBuilder | None = None,
) -> Aggregate:
    """Apply the status rules, in order.

    1. A required backend failed (``failed_required`` is the one that failed first, else
       the first failed required one in config order): 504 if it timed out, else 502.
    2. No backend that was called succeeded: 504 if every one timed out, else 502.
    3. Otherwise 200; ``complete`` is false if any backend failed (``skipped`` is not a
       failure). The body is :func:`merge`'s, or ``build``'s; when ``build``'s shape
       selects nothing, 502 ``shape_select_missing``.

    Every answer but a complete 200, and every answer made of a reply that may not be
    shared (``BackendResult.shareable``), carries ``Cache-Control: no-store`` and none of
    the backends' freshness fields or validators (:func:`not_to_be_kept`): a CDN or a
    browser must not keep it, whatever ``max-age`` a backend returned.
    """
    header = backends_header(placements, results)
    outcomes = {p.name: r.outcome for p, r in zip(placements, results, strict=True)}
    if failed_required is None:
        for i, (place, result) in enumerate(zip(placements, results, strict=True)):
            if place.required and not result.ok:
                failed_required = i
                break
    if failed_required is not None:
        name = placements[failed_required].name
        outcome = results[failed_required].outcome
        status = 504 if outcome == Outcome.TIMEOUT else 502
        return Aggregate(
            status,
            False,
            error_body(
                "required_backend_failed",
                f"required backend {name!r} failed: {outcome}",
                outcomes,
            ),
            header,
            (NO_STORE_FIELD,),
        )
    called = [r for r in results if r.outcome != Outcome.SKIPPED]
    if called and not any(r.outcome == Outcome.OK for r in called):
        status = 504 if all(r.outcome == Outcome.TIMEOUT for r in called) else 502
        return Aggregate(
            status,
            False,
            error_body("all_backends_failed", "no backend answered successfully", outcomes),
            header,
            (NO_STORE_FIELD,),
        )
    if build is None:
        body = merge(placements, results)
    else:
        try:
            body = build(placements, results)
        except SelectMissing:
            return Aggregate(
                502,
                False,
                error_body(
                    "shape_select_missing",
                    "the endpoint's shape.select found nothing in the merged response",
                    outcomes,
                ),
                header,
                (NO_STORE_FIELD,),
            )
    complete = all(r.ok for r in results)
    headers = merge_headers(results)
    # an answer made of a reply meant for one client is kept by no cache either, whether
    # or not that reply's own Cache-Control or Set-Cookie is returned
    shareable = all(r.shareable for r in results)
    return Aggregate(
        200,
        complete,
        body,
        header,
        headers if complete and shareable else not_to_be_kept(headers),
    )


def not_to_be_kept(headers: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``headers`` for a response no cache may keep: without any freshness field
    (``Cache-Control``, ``Expires``, targeted ``CDN-Cache-Control``...), then one
    ``Cache-Control: no-store`` (RFC 9111 section 5.2.2.5)."""
    kept = tuple(
        (name, value)
        for name, value in headers
        if not is_freshness_field(low := name.lower().encode("latin-1"))
        and low not in VALIDATOR_FIELDS
    )
    return (*kept, NO_STORE_FIELD)


def merge_headers(results: Sequence[BackendResult]) -> tuple[tuple[str, str], ...]:
    """Returned headers in config order; a later backend's field replaces an earlier one's,
    but: every backend's ``Set-Cookie`` lines are kept (each sets its own cookie, RFC 6265
    section 3); ``Cache-Control`` is combined into the strictest
    (:func:`~gateway._rules.cachecontrol.combine_cache_control`), so a later backend's
    ``max-age`` never lifts an earlier one's ``private``; ``Vary`` lists every backend's
    names; and one backend's ``Age`` is dropped when several return fields."""
    merged: dict[str, list[tuple[str, str]]] = {}
    controls: list[str] = []
    vary: dict[str, None] = {}
    contributors = 0
    for result in results:
        if result.outcome != Outcome.OK or not result.headers:
            continue
        contributors += 1
        fresh: dict[str, list[tuple[str, str]]] = {}
        own_controls: list[str] = []
        for name, value in result.headers:
            low = name.lower()
            if low == "set-cookie":
                merged.setdefault(low, []).append((name, value))
                continue
            if low == "cache-control":
                own_controls.append(value)
            elif low == "vary":
                vary.update((v.strip().lower(), None) for v in value.split(",") if v.strip())
            fresh.setdefault(low, []).append((name, value))
        if own_controls:
            controls.append(", ".join(own_controls))
        merged.update(fresh)
    if len(controls) > 1:
        name = merged["cache-control"][0][0]
        merged["cache-control"] = [(name, combine_cache_control(controls))]
    if contributors > 1:
        if "vary" in merged:  # varies on what any of them varies on (RFC 9110 12.5.5)
            merged["vary"] = [(merged["vary"][0][0], ", ".join(vary))]
        merged.pop("age", None)  # one backend's age is not the merged answer's
    return tuple(pair for pairs in merged.values() for pair in pairs)


def error_body(code: str, message: str, backends: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON error body: ``{"error": {"code", "message"}, "backends": {...}}``."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if backends is not None:
        body["backends"] = backends
    return body
