"""Prometheus metrics, served at ``GET /__gateway/metrics``.

With several workers (``gateway serve --workers N``) each worker writes its numbers to
files under ``PROMETHEUS_MULTIPROC_DIR`` (set by ``gateway serve``), and whichever worker
answers a scrape adds them all up (prometheus-client's multiprocess mode), so counters
from different workers add up instead of overwriting each other.

Metrics (all prefixed ``gateway_``):

- ``requests_total{endpoint, method, status}``: counter;
- ``request_duration_seconds{endpoint}``: histogram of whole requests;
- ``backend_duration_seconds{endpoint, backend, outcome}``: histogram per backend call;
- ``requests_in_flight``: gauge;
- ``upstream_connections{origin, client_cert, state}``: gauge of open and idle upstream
  connections per pool (``client_cert``: the certificate file its connections present,
  empty for none), updated whenever a connection opens or closes;
- ``rate_limited_total{endpoint, policy}``: requests refused with 429;
- ``cache_total{layer, result}``: ``layer`` is ``backend`` or ``endpoint``, ``result`` is
  ``hit``, ``miss`` or ``coalesced`` (a backend call that shared another's upstream request);
- ``state_errors_total{operation}``: failed store calls (``get``, ``set``, ``rate``): Redis
  down or slow.
- ``worker_deaths_total``: workers of ``gateway serve --workers N`` that exited
  unexpectedly (a crash, ``kill -9``); each replacement worker counts the one it replaces.

``endpoint`` is the config's route (``/api/users/{user_id}``), or ``none`` for requests no
route matched, so label values stay bounded whatever clients send.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter("gateway_requests", "Requests answered", ["endpoint", "method", "status"])
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds", "Whole-request latency", ["endpoint"], buckets=BUCKETS_S
)
BACKEND_DURATION = Histogram(
    "gateway_backend_duration_seconds",
    "Backend call latency by outcome",
    ["endpoint", "backend", "outcome"],
    buckets=BUCKETS_S,
)
IN_FLIGHT = Gauge(
    "gateway_requests_in_flight", "Requests being answered", multiprocess_mode="livesum"
)
WEBSOCKETS_OPEN = Gauge(
    "gateway_websockets_open",
    "WebSocket relays open, by endpoint",
    ["endpoint"],
    multiprocess_mode="livesum",
)
UPSTREAM_CONNECTIONS = Gauge(
    "gateway_upstream_connections",
    "Upstream connections by state",
    ["origin", "client_cert", "state"],
    multiprocess_mode="livesum",
)

RATE_LIMITED = Counter(
    "gateway_rate_limited", "Requests refused by a rate limit", ["endpoint", "policy"]
)
AUTH_REFUSED = Counter(
    "gateway_auth_refused", "Requests refused by an endpoint's auth policies", ["endpoint", "code"]
)
CACHE = Counter("gateway_cache", "Cache lookups by result", ["layer", "result"])
STATE_ERRORS = Counter(
    "gateway_state_errors", "Failed state store calls (Redis down or slow)", ["operation"]
)
WORKER_DEATHS = Counter(
    "gateway_worker_deaths", "Workers that exited unexpectedly and were replaced"
)


def observe_request(
    endpoint: str | None,
    method: str,
    status: int,
    duration_s: float,
    backends: Iterable[tuple[str, str, float]] = (),
) -> None:
    """Count one answered request and its backend calls ``(name, outcome, duration_s)``."""
    route = endpoint or "none"
    _child(REQUESTS, (route, method, str(status))).inc()
    _child(REQUEST_DURATION, (route,)).observe(duration_s)
    for name, outcome, backend_s in backends:
        _child(BACKEND_DURATION, (route, name, outcome)).observe(backend_s)


# Labelled children by metric and label values: ``labels()`` checks and locks on every
# call, a plain dict lookup does not. Label values are bounded (see above); the dict is
# cleared if it ever grows past the bound anyway.
_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}
_CHILDREN_MAX = 10_000


def _child(metric: Counter | Histogram, values: tuple[str, ...]) -> Any:
    key = (metric, values)
    child = _CHILDREN.get(key)
    if child is None:
        if len(_CHILDREN) >= _CHILDREN_MAX:
            _CHILDREN.clear()
        child = _CHILDREN[key] = metric.labels(*values)
    return child


def connections_changed(origin: str, client_cert: str, open_count: int, idle_count: int) -> None:
    """The transport reports a pool's counts whenever they change."""
    UPSTREAM_CONNECTIONS.labels(origin, client_cert, "open").set(open_count)
    UPSTREAM_CONNECTIONS.labels(origin, client_cert, "idle").set(idle_count)


def render() -> tuple[bytes, str]:
    """The exposition text: all workers' numbers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
