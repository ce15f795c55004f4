"""One upstream exchange, and shaping what it returned (two separate steps).

:func:`exchange` sends an :class:`UpstreamRequest` and returns a :class:`Reply`: the
status, the header lines and, for a 2xx, the whole body. Redirects (when the backend
follows them) and the size limits (``max_response_bytes`` per body, the request's
:class:`ByteBudget` for all its backends) are applied inside; every failure but
cancellation becomes a reply with an outcome. :func:`shape` turns a reply into the
backend's :class:`BackendResult`: parse the JSON, select, transform, and copy the
``return_headers`` (for a GraphQL backend, its response read first: ``data`` is the body
to shape, ``errors`` make the outcome ``graphql_error``). The cache layer stores replies, not results, so a stored body is
shaped anew for whichever backend reads it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import httpx
import orjson

from .._config.plan import BackendPlan
from .._rules.aggregate import BackendResult, Outcome, http_outcome
from .._rules.cachecontrol import may_share
from .._rules.graphql import read_response
from .._rules.headers import HOP_BY_HOP, connection_named
from .._rules.transform import SelectMissing
from .._upstream.transport import PoolKey, UpstreamResponse
from .request import UpstreamRequest, redirect_request

log = logging.getLogger("gateway")

Sender = Callable[
    [PoolKey, str, bytes, Sequence[tuple[bytes, bytes]], bytes | None],
    Awaitable[UpstreamResponse],
]
"""Sends one upstream request (pool key: origin and client identity; method, target,
header lines, body) and returns the response with its body still to stream: the
transport's ``send``."""

RawHeaders = Sequence[tuple[bytes, bytes]]


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


class Reply(NamedTuple):
    """What one upstream request came to.

    An answer has ``status`` > 0 and its header lines (names lower-case, as received); a
    2xx answer has its whole ``body`` (None for 204 and HEAD). A failure without an answer
    has ``status`` 0 and an ``outcome`` saying why, with ``detail`` for logs (never a
    header or body value). ``cache`` is ``hit`` or ``coalesced`` when the reply did not
    come from this call's own exchange, ``not-stored-authorization`` when the backend cache
    could not keep it (RFC 9111 section 3.5); ``host`` is the origin that answered, for an
    upstream with several hosts. A passthrough reply keeps its body open in ``stream``.

    A named tuple: immutable (a coalesced reply is shared) and cheap to build on the hot
    path, where a frozen dataclass costs a ``object.__setattr__`` per field.
    """

    outcome: str
    status: int = 0
    headers: RawHeaders = ()
    body: bytes | None = None
    detail: str = ""
    cache: str = ""
    host: str = ""
    stream: Any = None

    def tagged(self, *, cache: str | None = None, host: str | None = None) -> Reply:
        """The same reply, marked as coming from the cache or a coalesced call, or with the
        host that answered (what ``replace`` does, for less)."""
        return Reply(
            self.outcome,
            self.status,
            self.headers,
            self.body,
            self.detail,
            self.cache if cache is None else cache,
            self.host if host is None else host,
            self.stream,
        )


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


def _wire(
    request: UpstreamRequest,
) -> tuple[PoolKey, str, bytes, list[tuple[bytes, bytes]], bytes | None]:
    """The sender's arguments for ``request``."""
    return (
        request.base.key,
        request.method,
        request.target.encode("ascii"),
        request.headers,
        request.body,
    )


async def exchange(
    sender: Sender, backend: BackendPlan, budget: ByteBudget, request: UpstreamRequest
) -> Reply:
    """Send ``request`` (following redirects where the backend does) and read a 2xx
    body within the limits. Every failure but cancellation is a reply with an outcome:
    a bug fails this backend, never the request or the worker."""
    try:
        return await _exchange(sender, backend, budget, request)
    except BodyTooLarge as exc:
        return Reply(Outcome.TOO_LARGE, detail=str(exc))
    except httpx.DecodingError as exc:
        return Reply(Outcome.INVALID_RESPONSE, detail=f"cannot decode body: {exc}")
    except httpx.TransportError as exc:
        return Reply(Outcome.UNREACHABLE, detail=str(exc) or type(exc).__name__)
    except Exception as exc:
        log.exception("backend %s failed with an internal error", backend.name)
        return Reply(Outcome.INTERNAL_ERROR, detail=f"internal error: {type(exc).__name__}")


async def _exchange(
    sender: Sender, backend: BackendPlan, budget: ByteBudget, request: UpstreamRequest
) -> Reply:
    response = await sender(*_wire(request))
    for _ in range(backend.max_redirects if backend.follow_redirects else 0):
        if response.status not in REDIRECTS:
            break
        location = response.header(b"location")
        if location is None:
            break
        await response.aclose()
        followed = redirect_request(request, response.status, location.decode("latin-1"))
        if followed is None:
            return Reply(
                http_outcome(response.status),
                response.status,
                response.headers,
                detail="redirect to another origin not followed",
            )
        request = followed
        response = await sender(*_wire(request))
    try:
        status = response.status
        if not 200 <= status < 300:
            return Reply(
                http_outcome(status), status, response.headers, detail=f"upstream answered {status}"
            )
        body = await read_limited(response, backend.max_response_bytes, budget)
        empty = status == 204 or request.method == "HEAD"
        return Reply(Outcome.OK, status, response.headers, None if empty else body)
    finally:
        await response.aclose()


def returned_headers(backend: BackendPlan, headers: RawHeaders) -> tuple[tuple[str, str], ...]:
    """The backend's ``return_headers`` found in a reply, never a hop-by-hop field or one
    the reply's ``Connection`` names (RFC 9110 section 7.6.1)."""
    wanted = backend.return_headers
    if not wanted:
        return ()
    found = [(n, v) for n, v in headers if n.lower() in wanted]
    if not found:
        return ()
    drop = HOP_BY_HOP | connection_named(headers)
    return tuple(
        (n.decode("latin-1"), v.decode("latin-1")) for n, v in found if n.lower() not in drop
    )


def shape(backend: BackendPlan, reply: Reply) -> BackendResult:
    """A reply as the backend's result: a 2xx body parsed, selected and shaped (no body,
    as for 204 or HEAD, is ``null``), with its ``return_headers``, and whether the reply may
    be given to other clients (:func:`~gateway._rules.cachecontrol.may_share`: an answer
    made of one that may not is kept by no cache); a failure as it is. A bug while shaping
    fails this backend (``internal_error``), never the request."""
    try:
        result = _shape(backend, reply)
    except Exception as exc:
        log.exception("backend %s failed with an internal error", backend.name)
        return BackendResult(Outcome.INTERNAL_ERROR, detail=f"internal error: {type(exc).__name__}")
    if reply.status and not may_share(reply.headers):
        return replace(result, shareable=False)
    return result


def _shape(backend: BackendPlan, reply: Reply) -> BackendResult:
    if reply.outcome != Outcome.OK:
        return BackendResult(reply.outcome, detail=reply.detail, cache=reply.cache, host=reply.host)
    headers = returned_headers(backend, reply.headers)
    if reply.body is None:
        if backend.graphql is not None:
            return BackendResult(
                Outcome.INVALID_RESPONSE,
                detail="not a GraphQL response (no body)",
                cache=reply.cache,
                host=reply.host,
            )
        return BackendResult(Outcome.OK, None, headers=headers, cache=reply.cache, host=reply.host)
    try:
        value = orjson.loads(reply.body)
    except orjson.JSONDecodeError as exc:
        return BackendResult(
            Outcome.INVALID_RESPONSE,
            detail=f"body is not JSON: {exc}",
            cache=reply.cache,
            host=reply.host,
        )
    if backend.graphql is not None:
        outcome, value, errors, detail = read_response(value)
        if outcome != Outcome.OK:
            return BackendResult(
                outcome, detail=detail, cache=reply.cache, host=reply.host, errors=errors
            )
    try:
        selected = backend.transform.select_value(value)
    except SelectMissing as exc:
        return BackendResult(
            Outcome.INVALID_RESPONSE,
            detail=f"select path is missing at {exc.args[0]!r}",
            cache=reply.cache,
            host=reply.host,
        )
    return BackendResult(
        Outcome.OK,
        backend.transform.shape(selected),
        selected=selected,
        headers=headers,
        cache=reply.cache,
        host=reply.host,
    )
