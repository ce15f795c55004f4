"""Fan-out: one endpoint request, every backend called concurrently in one nursery.

Structure of one request (all inside the request handler's own task)::

    nursery, its scope carrying the endpoint deadline   # the whole request
      one child per backend (and the disconnect watcher)
        CancelScope(backend timeout)                    # one call, connect to last body byte
          the call's pipeline (gateway._call.pipeline), then shape the reply

A required backend that fails cancels the nursery at once; when the deadline expires the
nursery is cancelled and the response is built from what finished. A client that
disconnects cancels all of this; the transport closes every connection whose exchange
was cut, so the upstreams see the close.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import trio

from ._call.context import CallContext
from ._call.exchange import Sender, shape
from ._call.pipeline import AGGREGATED, CallSpec, CallStats, Exchange, Layer, compose
from ._call.request import UpstreamRequest, build_item_requests, build_requests
from ._config.plan import BackendPlan, EndpointPlan
from ._observability.tracing import CURRENT
from ._rules.aggregate import Aggregate, BackendResult, Outcome, aggregate
from ._rules.collect import FAIL, CollectionsPlan, ItemResults, Reader, failed_items, group_value
from ._rules.graph import all_hold, skipped_by_condition
from ._rules.template import UnresolvedReference

Receive = Callable[[], Awaitable[dict[str, Any]]]
"""The client request's ASGI ``receive``."""


async def _each(
    stack: Layer, backend: BackendPlan, requests: Sequence[UpstreamRequest]
) -> BackendResult:
    """``for_each``: all calls concurrently, each through the whole stack; results in
    element order; the first failure (in element order) fails the backend and cancels the
    other calls (``on_item_error: fail``; otherwise :func:`_each_item` runs instead)."""
    results: list[BackendResult | None] = [None] * len(requests)

    async def one(index: int, request: UpstreamRequest, nursery: trio.Nursery) -> None:
        result = shape(backend, await stack.send(request))
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
        shareable=all(r.shareable for r in done),
    )


async def _each_item(
    stack: Layer, backend: BackendPlan, requests: Sequence[UpstreamRequest | None]
) -> BackendResult:
    """``for_each`` with ``on_item_error: skip`` or ``"null"``: every call runs to its end
    and a failed one fails only its element, as does an element no request could be made
    for (None). The backend is ``ok`` with its
    :class:`~gateway._rules.collect.ItemResults`, in element order whatever order the calls
    finished in; a reference to it reads the list the body would show."""
    results: list[BackendResult | None] = [None] * len(requests)

    async def one(index: int, request: UpstreamRequest) -> None:
        results[index] = shape(backend, await stack.send(request))

    async with trio.open_nursery() as nursery:
        for index, request in enumerate(requests):
            if request is not None:
                nursery.start_soon(one, index, request)
    failed = frozenset(i for i, r in enumerate(results) if r is None or r.outcome != Outcome.OK)
    good = [(i, r) for i, r in enumerate(results) if r is not None and i not in failed]
    values: list[Any] = [None] * len(results)
    selected: list[Any] = [None] * len(results)
    for i, r in good:
        values[i], selected[i] = r.value, r.selected
    mode = backend.on_item_error
    return BackendResult(
        Outcome.OK,
        ItemResults(tuple(values), failed, mode),
        selected=ItemResults(tuple(selected), failed, mode).as_list(),
        headers=good[0][1].headers if good else (),
        shareable=all(r.shareable for r in results if r is not None),
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
    is not caught: it propagates, and the caller records the outcome. A static backend
    calls nothing: its result, made at load, is the answer.
    """
    if backend.static is not None:
        return _finished(backend.static, 0.0, started_s)
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
    items: list[UpstreamRequest | None] | None = None
    try:
        if backend.for_each and backend.on_item_error != FAIL:
            requests = []
            items = build_item_requests(backend, ctx, results, span_id)
        else:
            requests = build_requests(backend, ctx, results, span_id)
    except UnresolvedReference as exc:
        return BackendResult(Outcome.INVALID_REFERENCE, detail=str(exc), started_s=started_s)
    except httpx.InvalidURL as exc:  # e.g. a filled-in URL over httpx's length limit
        return BackendResult(
            Outcome.INVALID_REFERENCE, detail=f"invalid URL: {exc}", started_s=started_s
        )
    stats = CallStats(trio.CancelScope(deadline=start + backend.timeout_s))
    ctx.attempts[backend.name] = stats
    spec = CallSpec(
        backend, ctx.guards.get(backend.guard_name), ctx.state, stats, sender, ctx.budget
    )
    stack = compose(spec, AGGREGATED, Exchange(spec))
    result: BackendResult | None = None
    with stats.timeout:
        if items is not None:
            result = await _each_item(stack, backend, items)
        elif backend.for_each:
            result = await _each(stack, backend, requests)
        else:
            result = shape(backend, await stack.send(requests[0]))
    duration_s = trio.current_time() - start
    if result is None:  # the backend's own timeout fired (the breaker has been told)
        result = BackendResult(Outcome.TIMEOUT, detail="backend timeout")
    return _finished(result, duration_s, started_s, stats.retries, stats.hedges)


def _finished(
    result: BackendResult,
    duration_s: float,
    started_s: float,
    retries: int = 0,
    hedges: int = 0,
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
        result.host,
        result.shareable,
        result.errors,
    )


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
    collections = endpoint.collections
    readers = collections.readers if collections is not None else None
    skipped = (
        skipped_by_condition(
            [b.deps for b in backends],
            [all_hold(b.conditions, ctx.query, ctx.headers) for b in backends],
            collections.skip_groups if collections is not None else None,
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
            reader = readers.get(index) if readers else None
            view: Sequence[BackendResult | None] = results
            if reader is None:
                failed = [
                    backends[d].name for d in backend.deps if _outcome(results[d]) != Outcome.OK
                ]
            else:
                assert collections is not None
                failed, view = _read_groups(endpoint, collections, reader, results)
            if failed:
                result = BackendResult(
                    Outcome.DEPENDENCY_FAILED,
                    detail=f"{', '.join(failed)} failed",
                    started_s=began,
                )
            else:
                result = await call_backend(sender, backend, ctx, view, began)
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
    build = None
    if collections is not None:  # an into backend whose results found no place is not ok
        settled, build = collections.settle(endpoint.placements, final)
        final = list(settled)
    aggregate_ = aggregate(endpoint.placements, final, failed_required, build)
    if endpoint.debug and isinstance(aggregate_.body, dict):
        aggregate_.body["_gateway"] = debug_block(endpoint, final)
    return aggregate_, final


def _outcome(result: BackendResult | None) -> str | None:
    return result.outcome if result is not None else None


def _read_groups(
    endpoint: EndpointPlan,
    collections: CollectionsPlan,
    reader: Reader,
    results: Sequence[BackendResult | None],
) -> tuple[list[str], list[BackendResult | None]]:
    """For a backend that reads groups, once every backend it waits for has finished: what
    failed (a backend it references directly, or a group none of whose backends gave a
    value), and the results its templates read, each group's merged value in its slot."""
    backends = endpoint.backends
    failed = [backends[d].name for d in reader.direct if _outcome(results[d]) != Outcome.OK]
    view: list[BackendResult | None] = [*results, *(None for _ in collections.groups)]
    for g in reader.groups:
        group = collections.groups[g]
        present, value = group_value(group, endpoint.placements, results, collections.concat_arrays)
        if present:
            view[collections.first_slot + g] = BackendResult(Outcome.OK, value, selected=value)
        else:
            failed.append(f"group {group.name!r}")  # none of its backends gave a value
    return failed, view


def backend_report(result: BackendResult) -> dict[str, Any]:
    """A backend's line in the access log: ``{outcome, duration_ms}``, and ``reason`` when
    it did not succeed (what went wrong, from the gateway's own words: never a header,
    query or body value of the client's or the upstream's)."""
    report: dict[str, Any] = {
        "outcome": result.outcome,
        "duration_ms": round(result.duration_s * 1000, 3),
    }
    if result.outcome != Outcome.OK and result.detail:
        report["reason"] = result.detail
    return report


def debug_block(endpoint: EndpointPlan, results: Sequence[BackendResult]) -> dict[str, Any]:
    """``{"backends": {NAME: {outcome, started_ms, duration_ms, depends_on, retries,
    hedges[, reason][, host][, cache][, errors]}}}``; ``errors``: a GraphQL response's own
    (the upstream's words, which the access log never carries)."""
    return {
        "backends": {
            backend.name: {
                "outcome": result.outcome,
                **(
                    {"reason": result.detail}
                    if result.outcome != Outcome.OK and result.detail
                    else {}
                ),
                "started_ms": round(result.started_s * 1000, 3),
                "duration_ms": round(result.duration_s * 1000, 3),
                "depends_on": [endpoint.backends[d].name for d in backend.deps],
                "retries": result.retries,
                "hedges": result.hedges,
                **({"host": result.host} if result.host else {}),
                **({"cache": result.cache} if result.cache else {}),
                **({"failed_items": n} if (n := failed_items(result)) else {}),
                **({"errors": result.errors} if result.errors is not None else {}),
            }
            for backend, result in zip(endpoint.backends, results, strict=True)
        }
    }
