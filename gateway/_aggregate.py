"""Outcomes, merging and the status rules of an aggregated response (pure).

The fan-out (``_fanout``) produces one :class:`BackendResult` per backend, in config
order; :func:`aggregate` turns them into the status, headers and JSON body. Merge order is
the config order, never arrival order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._transform import JSON


class Outcome:
    """How a backend call ended. ``http_<status>`` is made by :func:`http_outcome`."""

    OK: Final = "ok"
    TIMEOUT: Final = "timeout"
    UNREACHABLE: Final = "unreachable"
    INVALID_RESPONSE: Final = "invalid_response"
    TOO_LARGE: Final = "too_large"
    CANCELLED: Final = "cancelled"
    INTERNAL_ERROR: Final = "internal_error"


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


@dataclass(frozen=True)
class Aggregate:
    """The response to send: status, whether every backend succeeded, and the body."""

    status: int
    complete: bool
    body: dict[str, Any]
    backends_header: str


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
    """``profile=ok, orders=timeout`` in config order."""
    return ", ".join(f"{p.name}={r.outcome}" for p, r in zip(placements, results, strict=True))


def aggregate(
    placements: Sequence[Placement],
    results: Sequence[BackendResult],
    failed_required: int | None = None,
) -> Aggregate:
    """Apply the status rules, in order.

    1. A required backend failed (``failed_required`` is the one that failed first, else
       the first failed required one in config order): 504 if it timed out, else 502.
    2. No backend succeeded: 504 if every one timed out, else 502.
    3. Otherwise 200; ``complete`` is false if any backend failed.
    """
    header = backends_header(placements, results)
    outcomes = {p.name: r.outcome for p, r in zip(placements, results, strict=True)}
    if failed_required is None:
        for i, (place, result) in enumerate(zip(placements, results, strict=True)):
            if place.required and result.outcome != Outcome.OK:
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
        )
    if not any(r.outcome == Outcome.OK for r in results):
        status = 504 if all(r.outcome == Outcome.TIMEOUT for r in results) else 502
        return Aggregate(
            status,
            False,
            error_body("all_backends_failed", "no backend answered successfully", outcomes),
            header,
        )
    complete = all(r.outcome == Outcome.OK for r in results)
    return Aggregate(200, complete, merge(placements, results), header)


def error_body(code: str, message: str, backends: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON error body: ``{"error": {"code", "message"}, "backends": {...}}``."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if backends is not None:
        body["backends"] = backends
    return body
