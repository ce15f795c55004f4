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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
import orjson
import trio

from ._aggregate import Aggregate, BackendResult, Outcome, aggregate, http_outcome
from ._plan import BackendPlan, EndpointPlan
from ._transform import SelectMissing

log = logging.getLogger("gateway")

# Error bodies of non-2xx answers are read (to keep the connection) only up to this size.
DRAIN_ERROR_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class CallContext:
    """What a backend call takes from the client request, already filtered by the config."""

    params: Mapping[str, str]
    headers: Sequence[tuple[bytes, bytes]] = ()
    extra_query: str = ""


class BodyTooLarge(Exception):
    pass


def build_request(backend: BackendPlan, ctx: CallContext) -> httpx.Request:
    """The upstream request for one backend: URL from config plus encoded parameters."""
    url = backend.upstream.base.join(backend.url.render(ctx.params, ctx.extra_query))
    headers: list[tuple[bytes, bytes]] = [(b"accept", b"application/json")]
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in backend.headers)
    headers.extend(ctx.headers)
    return httpx.Request(backend.method, url, headers=headers)


async def read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    """Read the (decoded) body, refusing more than ``max_bytes``.

    Raises:
        BodyTooLarge: the body exceeds the limit (counted after decompression).
    """
    chunks = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise BodyTooLarge(f"response body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _exchange(
    client: httpx.AsyncClient, backend: BackendPlan, ctx: CallContext
) -> BackendResult:
    response = await client.send(build_request(backend, ctx), stream=True)
    try:
        status = response.status_code
        if not 200 <= status < 300:
            return BackendResult(http_outcome(status), detail=f"upstream answered {status}")
        body = await read_limited(response, backend.max_response_bytes)
        if status == 204 or response.request.method == "HEAD":
            return BackendResult(Outcome.OK, None)
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return BackendResult(Outcome.INVALID_RESPONSE, detail=f"body is not JSON: {exc}")
        try:
            value = backend.transform.apply(value)
        except SelectMissing as exc:
            return BackendResult(
                Outcome.INVALID_RESPONSE, detail=f"select path is missing at {exc.args[0]!r}"
            )
        return BackendResult(Outcome.OK, value)
    finally:
        await response.aclose()


async def call_backend(
    client: httpx.AsyncClient, backend: BackendPlan, ctx: CallContext
) -> BackendResult:
    """Call one backend under its own timeout; every failure becomes an outcome.

    Cancellation from outside (deadline, a failed required sibling, a client that left)
    is not caught: it propagates, and the caller records the outcome.
    """
    start = trio.current_time()
    result: BackendResult | None = None
    with trio.move_on_after(backend.timeout_s):
        try:
            result = await _exchange(client, backend, ctx)
        except BodyTooLarge as exc:
            result = BackendResult(Outcome.TOO_LARGE, detail=str(exc))
        except httpx.DecodingError as exc:
            result = BackendResult(Outcome.INVALID_RESPONSE, detail=f"cannot decode body: {exc}")
        except httpx.TransportError as exc:
            result = BackendResult(Outcome.UNREACHABLE, detail=str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug must fail this backend, not the request or worker
            log.exception("backend %s failed with an internal error", backend.name)
            result = BackendResult(Outcome.INTERNAL_ERROR, detail=type(exc).__name__)
    duration_s = trio.current_time() - start
    if result is None:  # our own timeout fired
        return BackendResult(Outcome.TIMEOUT, duration_s=duration_s, detail="backend timeout")
    return BackendResult(result.outcome, result.value, duration_s, result.detail)


async def fan_out(
    client: httpx.AsyncClient, endpoint: EndpointPlan, ctx: CallContext
) -> tuple[Aggregate, list[BackendResult]]:
    """Call every backend of ``endpoint`` concurrently and aggregate in config order."""
    backends = endpoint.backends
    results: list[BackendResult | None] = [None] * len(backends)
    failed_required: int | None = None
    start = trio.current_time()

    async def run(index: int, nursery: trio.Nursery) -> None:
        nonlocal failed_required
        backend = backends[index]
        result = await call_backend(client, backend, ctx)
        results[index] = result
        if backend.required and result.outcome != Outcome.OK and failed_required is None:
            failed_required = index
            nursery.cancel_scope.cancel()  # siblings no longer matter

    with trio.move_on_after(endpoint.deadline_s):
        async with trio.open_nursery() as nursery:
            for index in range(len(backends)):
                nursery.start_soon(run, index, nursery)

    elapsed = trio.current_time() - start
    final: list[BackendResult] = []
    for result in results:
        if result is None:
            # Stopped from above: by a failed required sibling, else by the deadline.
            outcome = Outcome.CANCELLED if failed_required is not None else Outcome.TIMEOUT
            result = BackendResult(outcome, duration_s=elapsed, detail="stopped by the gateway")
        final.append(result)
    return aggregate(endpoint.placements, final, failed_required), final
