"""Fan-out: one endpoint request, every backend called concurrently in one nursery.

Structure of one request (all inside the request handler's own task)::

    move_on_after(endpoint deadline)          # the whole request
      nursery                                 # one child per backend, no other tasks
        move_on_after(backend timeout)        # one call, connect to last body byte
          client.send(...) / read body

A required backend that fails cancels the nursery at once; when the deadline expires the
nursery is cancelled and the response is built from what finished. A client that
disconnects cancels the handler's task, which cancels all of this; the transport closes
every connection whose exchange was cut, so the upstreams see the close.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import httpx
import orjson
import trio

from ._config.plan import BackendPlan, EndpointPlan
from ._observability import metrics as metrics
from ._observability.tracing import CURRENT
from ._rules.aggregate import Aggregate, BackendResult, Outcome, aggregate, http_outcome
from ._rules.cachecontrol import cache_key, shared_freshness
from ._rules.graph import all_hold, skipped_by_condition
from ._rules.resilience import UpstreamGuard
from ._rules.template import Ref, UnresolvedReference, expand, header_value, render, url_value, walk
from ._rules.transform import JSON, SelectMissing
from ._rules.urls import BaseUrl
from ._state.shared import SharedState, pack, unpack
from ._upstream.transport import IDEMPOTENT_METHODS, Origin, UpstreamResponse

log = logging.getLogger("gateway")

# Error bodies of non-2xx answers are read (to keep the connection) only up to this size.
DRAIN_ERROR_BODY_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    pass


class ByteBudget:
    """Upstream body bytes one request may still read, all its backends together."""

    __slots__ = ("limit", "remaining")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.remaining = limit

    def take(self, size: int) -> None:
        """Raises:
        BodyTooLarge: the request's upstream bodies crossed the limit."""
        self.remaining -= size
        if self.remaining < 0:
            raise BodyTooLarge(f"upstream bodies of this request exceed {self.limit} bytes")


def unlimited_budget() -> ByteBudget:
    return ByteBudget(2**62)


@dataclass(frozen=True)
class CallContext:
    """What backend calls may take from the client request.

    ``query`` and ``headers`` feed ``{query.NAME}``/``{header.NAME}`` references and
    ``when:`` conditions; only ``forward_headers`` and ``extra_query`` are passed on as they
    are, because the config listed them.
    """

    params: Mapping[str, str]
    forward_headers: Sequence[tuple[bytes, bytes]] = ()
    extra_query: str = ""
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes | None = None  # the client's JSON body, as received
    json_body: JSON = None  # ... and parsed
    budget: ByteBudget = field(default_factory=unlimited_budget)
    client_address: str = ""  # as believed under server.trusted_proxies
    guards: Mapping[str, UpstreamGuard] = field(default_factory=dict)  # by guard_name
    state: SharedState | None = None  # caches and coalescing
    # each backend call's retries and hedges so far, by backend name, so that a call cut
    # by the deadline is still reported with them
    attempts: dict[str, CallStats] = field(default_factory=dict)


Receive = Callable[[], Awaitable[dict[str, Any]]]
"""The client request's ASGI ``receive``."""

Sender = Callable[
    [Origin, str, bytes, Sequence[tuple[bytes, bytes]], bytes | None],
    Awaitable[UpstreamResponse],
]
"""Sends one upstream request (origin, method, target, header lines, body) and returns
the response with its body still to stream: the transport's ``send``."""


@dataclass(frozen=True, slots=True, eq=False)
class UpstreamRequest:
    """One backend call as the transport sends it, without httpx objects: the origin and
    base path come from config, the target is already percent-encoded and checked, the
    header lines are complete (Host and Content-Length as httpx would add them)."""

    method: str
    base: BaseUrl  # scheme, host and port (its base path is part of ``target``)
    target: str  # path and query, as on the request line
    headers: list[tuple[bytes, bytes]]
    body: bytes | None = None

    @property
    def url(self) -> str:
        """``scheme://host[:port]/path?query``, as httpx prints the URL."""
        return self.base.printed_origin + self.target


# A target httpx would leave exactly as it is (no encoding, no dot segments to remove);
# any other goes through httpx.URL, so both forms agree.
_CANONICAL_TARGET = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
MAX_URL_LENGTH = 65536  # httpx's


def upstream_request(
    method: str,
    base: BaseUrl,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None = None,
) -> UpstreamRequest:
    """The request httpx would build for ``base.origin + target`` (same target, same header
    lines in the same order); takes ownership of ``headers``.

    Raises:
        httpx.InvalidURL: the URL is too long or invalid.
    """
    if (
        _CANONICAL_TARGET.fullmatch(target) is None
        or "/." in target.partition("?")[0]
        or len(base.origin) + len(target) > MAX_URL_LENGTH
    ):
        target = httpx.URL(base.origin + target).raw_path.decode("ascii")
    names = {name.lower() for name, _ in headers}
    if body and b"content-length" not in names:
        headers.append((b"Content-Length", b"%d" % len(body)))
        names.add(b"content-length")
    auto: list[tuple[bytes, bytes]] = []
    if b"host" not in names:
        auto.append((b"Host", base.host_header))
    if (
        method in ("POST", "PUT", "PATCH")
        and b"content-length" not in names
        and b"transfer-encoding" not in names
    ):
        auto.append((b"Content-Length", b"0"))
    return UpstreamRequest(method, base, target, auto + headers if auto else headers, body)


_NO_ELEMENT = object()


def _resolver(
    ctx: CallContext, results: Sequence[BackendResult | None], element: object = _NO_ELEMENT
) -> Callable[[Ref], JSON]:
    def resolve(ref: Ref) -> JSON:
        if ref.kind == "param":
            return ctx.params[ref.name]
        if ref.kind == "query":
            values = ctx.query.get(ref.name)
            if not values:
                raise UnresolvedReference("not in the request's query")
            return values[0]
        if ref.kind == "header":
            value = ctx.headers.get(ref.name)
            if value is None:
                raise UnresolvedReference("not in the request's headers")
            return value
        if ref.has_wildcard and element is not _NO_ELEMENT:
            return element
        result = results[ref.index]
        assert result is not None and result.outcome == Outcome.OK
        return walk(result.selected, ref.path)

    return resolve


def build_request(
    backend: BackendPlan,
    ctx: CallContext,
    results: Sequence[BackendResult | None] = (),
    element: object = _NO_ELEMENT,
    span_id: bytes | None = None,
) -> UpstreamRequest:
    """The upstream request for one backend call: URL from config, references filled in.

    Raises:
        UnresolvedReference: a referenced value is missing or unsafe.
        httpx.InvalidURL: the filled-in URL is too long.
    """
    resolve = _resolver(ctx, results, element)
    path = render(backend.url, resolve, url_value)
    if ctx.extra_query:
        path += ("&" if backend.url.has_query else "?") + ctx.extra_query
    headers = list(backend.static_headers)
    for name, template in backend.header_templates:
        value = render(template, resolve, header_value)
        headers.append((name.encode("latin-1"), value.encode("utf-8")))
    headers.extend(ctx.forward_headers)
    trace = CURRENT.get()
    if trace is not None:
        headers.extend(trace.child_headers(span_id))
    content: bytes | None = None
    if backend.body is not None:
        if ctx.body is None:
            raise UnresolvedReference("the request has no JSON body to send")
        if backend.body:
            try:
                content = orjson.dumps(walk(ctx.json_body, backend.body))
            except UnresolvedReference as exc:
                raise UnresolvedReference(f"request body: {exc}") from None
        else:
            content = ctx.body  # forwarded intact
        headers.append((b"content-type", b"application/json"))
    base = backend.upstream.base
    return upstream_request(backend.method, base, base.base_path + path, headers, content)


def build_requests(
    backend: BackendPlan,
    ctx: CallContext,
    results: Sequence[BackendResult | None],
    span_id: bytes | None = None,
) -> list[UpstreamRequest]:
    """One request, or one per array element for ``for_each``.

    Raises:
        UnresolvedReference: a referenced value is missing or unsafe, or the array is
            longer than ``max_calls``.
    """
    if not backend.for_each:
        return [build_request(backend, ctx, results, span_id=span_id)]
    ref = next(
        r
        for t in (backend.url, *(t for _, t in backend.header_templates))
        for r in t.refs
        if r.has_wildcard
    )
    source = results[ref.index]
    assert source is not None
    try:
        elements = expand(source.selected, ref.path)
    except UnresolvedReference as exc:
        raise UnresolvedReference(f"{ref.text}: {exc}") from None
    if len(elements) > backend.max_calls:
        raise UnresolvedReference(
            f"{ref.text}: {len(elements)} elements exceed max_calls {backend.max_calls}"
        )
    return [build_request(backend, ctx, results, element, span_id) for element in elements]


async def read_limited(
    response: UpstreamResponse, max_bytes: int, budget: ByteBudget | None = None
) -> bytes:
    """Read the (decoded) body, refusing more than ``max_bytes`` or the request's budget.

    Raises:
        BodyTooLarge: the body exceeds a limit (counted after decompression).
    """
    # Without Content-Encoding the raw stream is the body: skip httpx's decoder chain.
    stream: AsyncIterable[bytes] = response.stream
    if response.header(b"content-encoding") is not None:
        stream = response.to_httpx().aiter_bytes()
    else:
        body = response.stream.complete_body()
        if body is not None:  # arrived with the head: no need to iterate
            _admit(0, len(body), max_bytes, budget)
            return body
    chunks = []
    total = 0
    async for chunk in stream:
        total = _admit(total, len(chunk), max_bytes, budget)
        chunks.append(chunk)
    return b"".join(chunks)


def _admit(total: int, size: int, max_bytes: int, budget: ByteBudget | None) -> int:
    """The body's size so far with ``size`` more bytes, refused past a limit.

    Raises:
        BodyTooLarge: past ``max_bytes`` or the request's budget.
    """
    total += size
    if total > max_bytes:
        raise BodyTooLarge(f"response body exceeds {max_bytes} bytes")
    if budget is not None:
        budget.take(size)
    return total


REDIRECTS = frozenset({301, 302, 303, 307, 308})


def redirect_request(
    request: UpstreamRequest, status: int, location: str
) -> UpstreamRequest | None:
    """The request that follows a redirect, or None when it leaves the origin.

    RFC 9110 section 15.4: 303 (and, by long practice, 301/302 after a POST) turn into a
    GET without a body; 307 and 308 repeat the request as it was.

    Raises:
        httpx.InvalidURL: ``location`` is not a valid URL reference.
    """
    url = httpx.URL(request.url)
    target = url.join(location)
    if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
        return None
    path = target.raw_path.decode("ascii")
    if status == 303 or (status in (301, 302) and request.method == "POST"):
        headers = [
            (k, v)
            for k, v in request.headers
            if k.lower() not in (b"content-type", b"content-length", b"transfer-encoding")
        ]
        method = "GET" if request.method != "HEAD" else "HEAD"
        return upstream_request(method, request.base, path, headers)
    headers = [(k, v) for k, v in request.headers if k.lower() != b"host"]
    return upstream_request(request.method, request.base, path, headers, request.body)


def _wire(
    request: UpstreamRequest,
) -> tuple[Origin, str, bytes, list[tuple[bytes, bytes]], bytes | None]:
    """The sender's arguments for ``request``."""
    return (
        request.base.key,
        request.method,
        request.target.encode("ascii"),
        request.headers,
        request.body,
    )


async def _exchange(
    sender: Sender, backend: BackendPlan, request: UpstreamRequest, budget: ByteBudget
) -> BackendResult:
    response = await sender(*_wire(request))
    for _ in range(backend.max_redirects if backend.follow_redirects else 0):
        if response.status not in REDIRECTS:
            break
        location = httpx.Headers(response.headers).get("location")
        if location is None:
            break
        await response.aclose()
        followed = redirect_request(request, response.status, location)
        if followed is None:
            return BackendResult(
                http_outcome(response.status),
                detail="redirect to another origin not followed",
            )
        request = followed
        response = await sender(*_wire(request))
    try:
        status = response.status
        if not 200 <= status < 300:
            return BackendResult(http_outcome(status), detail=f"upstream answered {status}")
        body = await read_limited(response, backend.max_response_bytes, budget)
        headers = tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in response.headers
            if name.lower() in backend.return_headers
        )
        empty = status == 204 or request.method == "HEAD"
        result = result_from_body(backend, None if empty else body, headers)
        if backend.cache is not None and result.outcome == Outcome.OK and not empty:
            ttl_s = _cache_ttl(backend, status, response.headers, request)
            if ttl_s > 0:
                result = replace(result, raw=body, ttl_s=ttl_s)
        return result
    finally:
        await response.aclose()


def result_from_body(
    backend: BackendPlan, body: bytes | None, headers: tuple[tuple[str, str], ...]
) -> BackendResult:
    """A 2xx body parsed, selected and shaped (None: no body, as for 204 or HEAD)."""
    if body is None:
        return BackendResult(Outcome.OK, None, headers=headers)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return BackendResult(Outcome.INVALID_RESPONSE, detail=f"body is not JSON: {exc}")
    try:
        selected = backend.transform.select_value(value)
    except SelectMissing as exc:
        return BackendResult(
            Outcome.INVALID_RESPONSE, detail=f"select path is missing at {exc.args[0]!r}"
        )
    return BackendResult(
        Outcome.OK, backend.transform.shape(selected), selected=selected, headers=headers
    )


# Request fields the gateway itself sets per client or per request: never part of a cache
# key (they would make every entry private to one request).
NOT_CACHE_KEYED = frozenset(
    {
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
        b"traceparent",
        b"tracestate",
        b"x-request-id",
    }
)


def cache_key_fields(request: UpstreamRequest) -> frozenset[bytes]:
    """The request fields that may vary an upstream response: every one the gateway sends
    (the upstream's and backend's headers, forwarded client headers) but its own
    per-request ones."""
    return frozenset(n.lower() for n, _ in request.headers) - NOT_CACHE_KEYED


def _cache_ttl(
    backend: BackendPlan,
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    request: UpstreamRequest,
) -> float:
    """How long a response may be cached: as its Cache-Control allows, else the backend's
    ``cache.ttl`` when the upstream gave no freshness at all."""
    assert backend.cache is not None
    fields = cache_key_fields(request)
    freshness = shared_freshness(
        status,
        headers,
        now_s=time.time(),
        key_headers=fields,
        request_authorized=b"authorization" in fields,
    )
    if freshness.storable:
        return freshness.ttl_s
    if freshness.reason == "no-freshness" and backend.cache.ttl_s is not None:
        return backend.cache.ttl_s
    return 0.0


async def _attempt(
    sender: Sender, backend: BackendPlan, budget: ByteBudget, request: UpstreamRequest
) -> BackendResult:
    """One upstream call; every failure but cancellation becomes an outcome."""
    try:
        return await _exchange(sender, backend, request, budget)
    except BodyTooLarge as exc:
        return BackendResult(Outcome.TOO_LARGE, detail=str(exc))
    except httpx.DecodingError as exc:
        return BackendResult(Outcome.INVALID_RESPONSE, detail=f"cannot decode body: {exc}")
    except httpx.TransportError as exc:
        return BackendResult(Outcome.UNREACHABLE, detail=str(exc) or type(exc).__name__)
    except Exception as exc:  # a bug must fail this backend, not the request or worker
        log.exception("backend %s failed with an internal error", backend.name)
        return BackendResult(Outcome.INTERNAL_ERROR, detail=type(exc).__name__)


@dataclass
class CallStats:
    """One backend call's attempts, shared by its retries and hedges.

    ``timeout`` is the backend's own timeout scope: an attempt it cuts counts as its host
    failing (slow), while cancellation from above (deadline, sibling, client) does not.
    """

    timeout: trio.CancelScope
    retries: int = 0
    hedges: int = 0
    last_host: int | None = None


Call = Callable[[UpstreamRequest], Awaitable[BackendResult]]


async def _attempt_each(call: Call, requests: Sequence[UpstreamRequest]) -> BackendResult:
    """``for_each``: all calls concurrently; results in element order; the first failure
    (in element order) fails the backend and cancels the other calls."""
    results: list[BackendResult | None] = [None] * len(requests)

    async def one(index: int, request: UpstreamRequest, nursery: trio.Nursery) -> None:
        result = await call(request)
        results[index] = result
        if result.outcome not in (Outcome.OK, Outcome.CIRCUIT_OPEN):
            nursery.cancel_scope.cancel()  # the list is incomplete whatever the others do
        # A call the breaker refused cancels nothing: the calls it admitted (a half-open
        # breaker's probe among them) finish, so the breaker gets its verdict and can close.

    async with trio.open_nursery() as nursery:
        for index, request in enumerate(requests):
            nursery.start_soon(one, index, request, nursery)
    failed = [r for r in results if r is not None and r.outcome != Outcome.OK]
    if failed:
        return failed[0]
    done = [r for r in results if r is not None]
    return BackendResult(
        Outcome.OK,
        [r.value for r in done],
        selected=[r.selected for r in done],
        headers=done[0].headers if done else (),
    )


async def call_backend(
    sender: Sender,
    backend: BackendPlan,
    ctx: CallContext,
    results: Sequence[BackendResult | None] = (),
    started_s: float = 0.0,
) -> BackendResult:
    """Call one backend under its own timeout (for ``for_each``: all its calls together);
    ``started_s`` is when it started, since the request did (for the result).

    Cancellation from outside (deadline, a failed required sibling, a client that left)
    is not caught: it propagates, and the caller records the outcome.
    """
    trace = CURRENT.get()
    if trace is None or trace.span is None:
        return await _call_backend(sender, backend, ctx, results, started_s)
    # exported spans (the otel extra): the backend's span id is the one sent upstream
    span = trace.exporter.start_backend(trace.span, backend.name)
    try:
        result = await _call_backend(
            sender, backend, ctx, results, started_s, trace.exporter.ids(span)[1]
        )
        span.set_attribute("gateway.backend.outcome", result.outcome)
        return result
    except BaseException:
        span.set_attribute("gateway.backend.outcome", "cancelled")
        raise
    finally:
        span.end()


async def _call_backend(
    sender: Sender,
    backend: BackendPlan,
    ctx: CallContext,
    results: Sequence[BackendResult | None],
    started_s: float,
    span_id: bytes | None = None,
) -> BackendResult:
    start = trio.current_time()
    try:
        requests = build_requests(backend, ctx, results, span_id)
    except UnresolvedReference as exc:
        return BackendResult(Outcome.INVALID_REFERENCE, detail=str(exc), started_s=started_s)
    except httpx.InvalidURL as exc:  # e.g. a filled-in URL over httpx's length limit
        return BackendResult(
            Outcome.INVALID_REFERENCE, detail=f"invalid URL: {exc}", started_s=started_s
        )
    guard = ctx.guards.get(backend.guard_name)
    stats = CallStats(trio.CancelScope(deadline=start + backend.timeout_s))
    ctx.attempts[backend.name] = stats
    # bound with partial (the request comes last), not a closure: no extra coroutine frame
    call: Call
    if guard is None:
        call = partial(_attempt, sender, backend, ctx.budget)
    else:
        limiter = guard.limiter
        if limiter is not None and guard.bulkhead is not None:
            with trio.move_on_after(guard.bulkhead.queue_timeout_s) as queued:
                await limiter.acquire()
            if queued.cancelled_caught:
                guard.overloaded_total += 1
                return BackendResult(
                    Outcome.OVERLOADED,
                    duration_s=trio.current_time() - start,
                    detail="bulkhead full",
                    started_s=started_s,
                )

        call = partial(_guarded, sender, backend, ctx.budget, guard, stats)
    if backend.cache is not None and ctx.state is not None:
        call = _cached(call, backend, ctx.state)
    result: BackendResult | None = None
    if guard is not None:
        guard.budget.request_started()
    try:
        with stats.timeout:
            if backend.for_each:
                result = await _attempt_each(call, requests)
            else:
                result = await call(requests[0])
    finally:
        if guard is not None:
            guard.budget.request_ended()
            if guard.limiter is not None and guard.bulkhead is not None:
                guard.limiter.release()
    duration_s = trio.current_time() - start
    if result is None:  # our own timeout fired: the upstream's failure, for the breaker too
        if guard is not None and guard.breaker is not None:
            guard.breaker.record(trio.current_time(), failed=True)
        result = BackendResult(Outcome.TIMEOUT, detail="backend timeout")
    host = ""
    if guard is not None and guard.hosts is not None and stats.last_host is not None:
        host = guard.bases[stats.last_host].origin  # the last attempt's, for debug: true
    return _finished(result, duration_s, started_s, stats.retries, stats.hedges, host)


def _finished(
    result: BackendResult,
    duration_s: float,
    started_s: float,
    retries: int = 0,
    hedges: int = 0,
    host: str = "",
) -> BackendResult:
    """``result`` with the call's timing and attempts (what ``replace`` does, for less)."""
    return BackendResult(
        result.outcome,
        result.value,
        duration_s,
        result.detail,
        result.selected,
        result.headers,
        started_s,
        retries,
        hedges,
        result.cache,
        host,
        result.raw,
        result.ttl_s,
    )


def _cached(call: Call, backend: BackendPlan, state: SharedState) -> Call:
    """``call`` behind the backend cache and, with ``coalesce``, the worker's coalescer:
    a stored response is answered without calling the upstream; concurrent identical
    calls share one upstream request (if its caller leaves, a follower takes over)."""
    assert backend.cache is not None
    coalesce = backend.cache.coalesce
    identity = id(backend)  # results are shaped by this backend's transform

    async def cached(request: UpstreamRequest) -> BackendResult:
        fields = cache_key_fields(request)
        key = cache_key(request.method, request.url, request.headers, fields)
        entry = await state.get(key)
        unpacked = unpack(entry) if entry is not None else None
        if unpacked is not None:
            meta, body = unpacked
            headers = tuple((str(n), str(v)) for n, v in meta) if isinstance(meta, list) else ()
            metrics.CACHE.labels("backend", "hit").inc()
            return replace(result_from_body(backend, body, headers), cache="hit")

        leader = False

        async def fetch() -> BackendResult:
            nonlocal leader
            leader = True
            result = await call(request)
            if result.raw is not None and result.ttl_s > 0:
                meta = [list(h) for h in result.headers]
                await state.set(key, pack(meta, result.raw), result.ttl_s)
            return replace(result, raw=None)

        result = await state.flights.run((identity, key), fetch) if coalesce else await fetch()
        if not leader:
            metrics.CACHE.labels("backend", "coalesced").inc()
            return replace(result, cache="coalesced")
        metrics.CACHE.labels("backend", "miss").inc()
        return result

    return cached


def retarget(request: UpstreamRequest, base: BaseUrl) -> UpstreamRequest:
    """The same request to another host of the upstream (same scheme and base path).

    The header lines are kept as they are (the Host field built for the first host
    included); only a field spelt ``host`` in lower case is replaced by the new host's.
    """
    headers = [(k, v) for k, v in request.headers if k != b"host"]
    if len(headers) != len(request.headers) and all(k.lower() != b"host" for k, _ in headers):
        headers.insert(0, (b"Host", base.host_header))
    return replace(request, base=base, headers=headers)


def pick_host(
    guard: UpstreamGuard | None, request: UpstreamRequest, avoid: int | None = None
) -> tuple[int | None, UpstreamRequest]:
    """With several hosts: the host the balancer picks (another than ``avoid`` where there
    is one), counted as started, and the request aimed at it; the caller reports the end
    with ``guard.hosts.ended``. With one host: ``(None, request)``."""
    hosts = guard.hosts if guard is not None else None
    if guard is None or hosts is None:
        return None, request
    index = hosts.pick(trio.current_time(), avoid=avoid)
    if index:  # requests are built for the first host
        request = retarget(request, guard.bases[index])
    hosts.started(index)
    return index, request


async def _timed(
    sender: Sender,
    backend: BackendPlan,
    request: UpstreamRequest,
    budget: ByteBudget,
    guard: UpstreamGuard,
    stats: CallStats,
) -> BackendResult:
    """One attempt, on a host picked by the upstream's balancer (another than the previous
    attempt's where there is one); its duration is fed to the upstream's latency window
    when it succeeds, and its verdict to the host's outlier detection."""
    index, request = pick_host(guard, request, avoid=stats.last_host)
    if index is not None:
        stats.last_host = index
    verdict: bool | None = None
    try:
        start = trio.current_time()
        result = await _attempt(sender, backend, budget, request)
        verdict = _counts_as_failure(result.outcome)
        if result.outcome == Outcome.OK:
            guard.latency.add(trio.current_time() - start)
        return result
    except BaseException:
        # cut by the backend's own timeout: this host was too slow
        verdict = True if stats.timeout.cancel_called else None
        raise
    finally:
        if index is not None and guard.hosts is not None:
            guard.hosts.ended(index, trio.current_time(), verdict)


async def _hedged(
    sender: Sender,
    backend: BackendPlan,
    request: UpstreamRequest,
    budget: ByteBudget,
    guard: UpstreamGuard,
    stats: CallStats,
) -> BackendResult:
    """Delayed hedging: if the call has not answered after the hedge delay, send another
    (up to ``max``); the first success wins and the rest are cancelled, which closes their
    connections. Hedges count against the retry budget."""
    hedge = guard.hedge
    delay = guard.hedge_delay()
    if hedge is None or delay is None:
        return await _timed(sender, backend, request, budget, guard, stats)
    results: list[BackendResult] = []
    winner: BackendResult | None = None
    first_done = trio.Event()

    async def one(is_hedge: bool, nursery: trio.Nursery) -> None:
        nonlocal winner
        try:
            result = await _timed(sender, backend, request, budget, guard, stats)
        finally:
            if is_hedge:
                guard.budget.retry_ended()
        results.append(result)
        first_done.set()
        if result.outcome == Outcome.OK and winner is None:
            winner = result
            nursery.cancel_scope.cancel()  # the slower calls no longer matter

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, False, nursery)
        for _ in range(hedge.max_extra):
            with trio.move_on_after(delay):
                await first_done.wait()
            if first_done.is_set() or not guard.budget.try_retry():
                break
            guard.hedges_total += 1
            stats.hedges += 1
            nursery.start_soon(one, True, nursery)
        # wait for a success or for every call to end
    if winner is not None:
        return winner
    return results[0]


def _counts_as_failure(outcome: str) -> bool:
    """What a circuit breaker counts: the upstream failing, not the client or the gateway."""
    return outcome in (Outcome.UNREACHABLE, Outcome.TIMEOUT) or outcome.startswith("http_5")


async def _guarded(
    sender: Sender,
    backend: BackendPlan,
    budget: ByteBudget,
    guard: UpstreamGuard,
    stats: CallStats,
    request: UpstreamRequest,
) -> BackendResult:
    """One call with the upstream's circuit breaker and retries (within the retry budget,
    with jittered exponential backoff). Everything runs inside the caller's timeout and
    deadline scopes, so no retry outlives them."""
    retry = guard.retry
    idempotent = request.method in IDEMPOTENT_METHODS
    retryable = idempotent or (retry is not None and retry.unsafe)
    attempts = 1 + (retry.attempts if retry is not None and retryable else 0)
    result = BackendResult(Outcome.CIRCUIT_OPEN, detail="circuit breaker open")
    for attempt in range(attempts):
        breaker = guard.breaker
        if breaker is not None and not breaker.allow(trio.current_time()):
            return (
                result
                if attempt
                else BackendResult(Outcome.CIRCUIT_OPEN, detail="circuit breaker open")
            )
        is_retry = attempt > 0
        if is_retry and not guard.budget.try_retry():
            if breaker is not None:
                breaker.release(trio.current_time())
            return result
        if is_retry:
            stats.retries += 1
        try:
            if idempotent and guard.hedge is not None:
                result = await _hedged(sender, backend, request, budget, guard, stats)
            else:
                result = await _timed(sender, backend, request, budget, guard, stats)
        except BaseException:
            if breaker is not None:
                breaker.release(trio.current_time())
            raise
        finally:
            if is_retry:
                guard.budget.retry_ended()
        if breaker is not None:
            breaker.record(trio.current_time(), _counts_as_failure(result.outcome))
        if retry is None or result.outcome not in retry.on or attempt == attempts - 1:
            return result
        await trio.sleep(retry.backoff_s * (2**attempt) * random.uniform(0.5, 1.5))
    return result


async def _watch_disconnect(receive: Receive, gone: list[bool], scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.append(True)
            scope.cancel()
            return


async def fan_out(
    sender: Sender,
    endpoint: EndpointPlan,
    ctx: CallContext,
    receive: Receive | None = None,
) -> tuple[Aggregate, list[BackendResult]] | None:
    """Run the endpoint's backends as a graph: each starts as soon as the backends it
    references have finished, all in one nursery under the deadline; aggregate in config
    order.

    With ``receive`` (the client request's ASGI channel), a task of the same nursery
    watches for ``http.disconnect``: a client that leaves cancels every backend call at
    once, and the answer is None (there is no one to send it to). The watcher is
    cancelled as soon as the last backend ends.
    """
    backends = endpoint.backends
    results: list[BackendResult | None] = [None] * len(backends)
    finished = [trio.Event() for _ in backends]
    skipped = (
        skipped_by_condition(
            [b.deps for b in backends],
            [all_hold(b.conditions, ctx.query, ctx.headers) for b in backends],
        )
        if endpoint.has_conditions
        else [False] * len(backends)
    )
    failed_required: int | None = None
    start = trio.current_time()
    running = len(backends)
    gone: list[bool] = []

    async def run(index: int, nursery: trio.Nursery) -> None:
        nonlocal failed_required, running
        backend = backends[index]
        try:
            if skipped[index]:
                results[index] = BackendResult(Outcome.SKIPPED, detail="condition not met")
                return
            for dep in backend.deps:
                await finished[dep].wait()
            began = trio.current_time() - start
            failed = [backends[d].name for d in backend.deps if _outcome(results[d]) != Outcome.OK]
            if failed:
                result = BackendResult(
                    Outcome.DEPENDENCY_FAILED,
                    detail=f"{', '.join(failed)} failed",
                    started_s=began,
                )
            else:
                result = await call_backend(sender, backend, ctx, results, began)
            results[index] = result
        finally:
            finished[index].set()
            running -= 1
        if backend.required and not result.ok and failed_required is None:
            failed_required = index
            nursery.cancel_scope.cancel()  # siblings no longer matter
        elif running == 0 and receive is not None:
            nursery.cancel_scope.cancel()  # only the disconnect watcher is left

    async with trio.open_nursery() as nursery:
        # the deadline on the nursery's own scope: one scope for deadline and cancellation
        nursery.cancel_scope.deadline = start + endpoint.deadline_s
        if receive is not None and backends:
            nursery.start_soon(_watch_disconnect, receive, gone, nursery.cancel_scope)
        for index in range(len(backends)):
            nursery.start_soon(run, index, nursery)
    if gone:
        return None

    elapsed = trio.current_time() - start
    final: list[BackendResult] = []
    for backend, result in zip(backends, results, strict=True):
        if result is None:
            # Stopped from above: by a failed required sibling, else by the deadline.
            outcome = Outcome.CANCELLED if failed_required is not None else Outcome.TIMEOUT
            stats = ctx.attempts.get(backend.name)
            result = BackendResult(
                outcome,
                duration_s=elapsed,
                detail="stopped by the gateway",
                retries=stats.retries if stats else 0,
                hedges=stats.hedges if stats else 0,
            )
        final.append(result)
    aggregate_ = aggregate(endpoint.placements, final, failed_required)
    if endpoint.debug:
        aggregate_.body["_gateway"] = debug_block(endpoint, final)
    return aggregate_, final


def _outcome(result: BackendResult | None) -> str | None:
    return result.outcome if result is not None else None


def debug_block(endpoint: EndpointPlan, results: Sequence[BackendResult]) -> dict[str, Any]:
    """``{"backends": {NAME: {outcome, started_ms, duration_ms, depends_on, retries,
    hedges}}}``."""
    return {
        "backends": {
            backend.name: {
                "outcome": result.outcome,
                "started_ms": round(result.started_s * 1000, 3),
                "duration_ms": round(result.duration_s * 1000, 3),
                "depends_on": [endpoint.backends[d].name for d in backend.deps],
                "retries": result.retries,
                "hedges": result.hedges,
                **({"host": result.host} if result.host else {}),
            }
            for backend, result in zip(endpoint.backends, results, strict=True)
        }
    }
