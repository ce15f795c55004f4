"""Passthrough endpoints: one backend, streamed both ways without buffering or parsing.

``timeout`` is an inactivity bound here: it limits the wait for the response head (counted
from the last request-body chunk sent) and every gap between response-body chunks, never
the whole transfer, so a long upload or download is not cut while data keeps moving.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import httpx
import trio

from ._config.plan import EndpointPlan
from ._errors import RequestBodyTooLarge
from ._fanout import CallContext, build_request, pick_host
from ._rules.aggregate import Outcome, http_outcome
from ._rules.headers import RawHeaders, strip_hop_by_hop

# The server sets its own Date; an upstream's would be sent twice. X-Gateway-* fields are
# the gateway's own (see _endpoint) and never come from an upstream.
_NOT_PASSED_BACK = frozenset({b"date"})


class PassthroughAborted(Exception):
    """The upstream stalled (longer than the backend's timeout) or failed mid-body.

    Raised from the body iterator after the response has started. The app logs it and
    returns without finishing the body, so the server closes the client connection
    instead of ending the body as if it were complete.
    """


@dataclass(frozen=True)
class PassthroughResult:
    """Either a streaming response (``body`` set) or a failure (``outcome`` not ok)."""

    outcome: str
    status: int
    headers: RawHeaders
    body: AsyncIterator[bytes] | None
    backends_header: str


async def open_passthrough(
    client: httpx.AsyncClient,
    endpoint: EndpointPlan,
    ctx: CallContext,
    method: str,
    body: AsyncIterable[bytes] | None,
    body_headers: RawHeaders,
    max_body_bytes: int,
) -> PassthroughResult:
    """Send the request (streaming ``body``) and wait for the response head.

    Raises:
        RequestBodyTooLarge: the client sent more than ``max_body_bytes``.
    """
    backend = endpoint.backends[0]
    timeout_s = backend.timeout_s
    scope = trio.CancelScope(deadline=trio.current_time() + timeout_s)

    async def upload(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            if sent > max_body_bytes:
                raise RequestBodyTooLarge(f"request body exceeds {max_body_bytes} bytes")
            scope.deadline = trio.current_time() + timeout_s
            yield chunk
        scope.deadline = trio.current_time() + timeout_s

    base = build_request(backend, ctx)

    def failed(outcome: str) -> PassthroughResult:
        status = 504 if outcome == Outcome.TIMEOUT else 502
        return PassthroughResult(outcome, status, [], None, f"{backend.name}={outcome}")

    guard = ctx.guards.get(backend.guard_name)
    host, base = pick_host(guard, base)
    verdict: bool | None = None  # for the host's outlier detection, if it has hosts
    try:
        headers = [(k, v) for k, v in base.headers if k.lower() != b"accept"]
        headers.extend(body_headers)
        request = httpx.Request(
            method,
            base.url,
            headers=headers,
            content=upload(body) if body is not None else None,
        )
        response: httpx.Response | None = None
        with scope:
            try:
                response = await client.send(request, stream=True)
            except httpx.TransportError:
                verdict = True
                return failed(Outcome.UNREACHABLE)
        if response is None:
            verdict = True
            return failed(Outcome.TIMEOUT)
        verdict = response.status_code >= 500
    finally:
        if host is not None and guard is not None and guard.hosts is not None:
            guard.hosts.ended(host, trio.current_time(), verdict)

    status = response.status_code
    outcome = Outcome.OK if 200 <= status < 400 else http_outcome(status)
    return PassthroughResult(
        outcome,
        status,
        [
            (name, value)
            for name, value in strip_hop_by_hop(response.headers.raw, also=_NOT_PASSED_BACK)
            if not name.lower().startswith(b"x-gateway-")
        ],
        _stream_body(response, timeout_s),
        f"{backend.name}={outcome}",
    )


async def _stream_body(response: httpx.Response, gap_s: float) -> AsyncIterator[bytes]:
    """Yield raw (still encoded) body chunks; each wait is bounded by ``gap_s``."""
    try:
        chunks = response.aiter_raw().__aiter__()
        while True:
            chunk = b""
            with trio.move_on_after(gap_s) as scope:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except httpx.TransportError as exc:
                    raise PassthroughAborted(f"upstream failed mid-body: {exc}") from None
            if scope.cancelled_caught:
                raise PassthroughAborted(f"no body data from upstream for {gap_s:g}s")
            yield chunk  # outside the cancel scope: never yield inside one
    finally:
        await response.aclose()
