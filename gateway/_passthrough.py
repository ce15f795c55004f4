"""Passthrough endpoints: one backend, streamed both ways without buffering or parsing.

The call runs the passthrough pipeline (:data:`gateway._call.pipeline.PASSTHROUGH`: the
circuit breaker, the bulkhead, host choice with outlier detection) around a streaming
exchange; only the layers that need a replayable body or a buffered reply (cache,
coalescing, retries, hedging) are left out. A bulkhead slot is held until the response
body has been streamed.

``timeout`` is an inactivity bound here: it limits the wait for the response head (counted
from the last request-body chunk sent) and every gap between response-body chunks, never
the whole transfer, so a long upload or download is not cut while data keeps moving.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import trio

from ._call.context import CallContext
from ._call.exchange import Reply
from ._call.pipeline import PASSTHROUGH, CallSpec, CallStats, compose
from ._call.request import UpstreamRequest, build_request
from ._config.plan import EndpointPlan
from ._errors import RequestBodyTooLarge
from ._rules.aggregate import Outcome, http_outcome
from ._rules.headers import RawHeaders, passed_back
from ._upstream.transport import CLIENT_IDENTITY


class PassthroughAborted(Exception):
    """The upstream stalled (longer than the backend's timeout) or failed mid-body.

    Raised from the body iterator after the response has started. The app logs it and
    returns without finishing the body, so the server closes the client connection
    instead of ending the body as if it were complete.
    """


@dataclass(frozen=True)
class PassthroughResult:
    """Either a streaming response (``body`` set) or a failure (``outcome`` not ok, with
    ``detail`` saying why)."""

    outcome: str
    status: int
    headers: RawHeaders
    body: AsyncIterator[bytes] | None
    backends_header: str
    detail: str = ""


class OpenBody:
    """A passthrough response whose body is still to stream; ``call_on_close`` registers
    what to do once it is closed (a bulkhead slot to release)."""

    __slots__ = ("_closers", "response")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._closers: list[Callable[[], object]] = []

    def call_on_close(self, fn: Callable[[], object]) -> None:
        self._closers.append(fn)

    async def aclose(self) -> None:
        try:
            await self.response.aclose()
        finally:
            closers, self._closers = self._closers, []
            for fn in closers:
                fn()


class Streaming:
    """The innermost layer of a passthrough call: send the request with its body streamed
    and return at the response head, the body left open."""

    __slots__ = ("body", "body_headers", "client", "method")

    def __init__(
        self,
        client: httpx.AsyncClient,
        method: str,
        body: AsyncIterable[bytes] | None,
        body_headers: RawHeaders,
    ) -> None:
        self.client = client
        self.method = method
        self.body = body
        self.body_headers = body_headers

    async def send(self, request: UpstreamRequest) -> Reply:
        # The client's body comes with its own framing: a `Content-Length: 0` added for a
        # backend `method` of POST, PUT or PATCH without a body must not go with it.
        if self.body:
            dropped = (b"content-length", b"transfer-encoding")
            headers = [(k, v) for k, v in request.headers if k.lower() not in dropped]
        else:
            headers = list(request.headers)
        headers.extend(self.body_headers)
        outgoing = httpx.Request(
            self.method,
            request.url,
            headers=headers,
            content=self.body,
            # the pool is chosen by origin and client certificate: the upstream's own
            extensions={CLIENT_IDENTITY: request.base.client_identity},
        )
        try:
            response = await self.client.send(outgoing, stream=True)
        except httpx.TransportError as exc:
            return Reply(Outcome.UNREACHABLE, detail=str(exc) or type(exc).__name__)
        status = response.status_code
        outcome = Outcome.OK if 200 <= status < 400 else http_outcome(status)
        return Reply(outcome, status, response.headers.raw, stream=OpenBody(response))


def request_body_headers(headers: RawHeaders) -> tuple[RawHeaders, bool]:
    """The client's fields that describe its body, to send with it upstream, and whether
    it has a body (RFC 9112 section 6.3: a request has one only if Content-Length or
    Transfer-Encoding says so).

    ``Content-Length`` is kept, so the upstream gets the body framed as the client framed
    it while it streams: many servers (Python's ``http.server``, embedded ones) read no
    body from a chunked request. The transport sends exactly that many octets, or fails
    the call and closes the connection, so a short body never looks complete upstream.
    Without one (the client sent chunked) the body goes chunked.
    """
    body_headers = [
        (name, value) for name, value in headers if name in (b"content-type", b"content-length")
    ]
    has_body = any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)
    return body_headers, has_body


async def open_passthrough(
    client: httpx.AsyncClient,
    endpoint: EndpointPlan,
    ctx: CallContext,
    method: str,
    body: AsyncIterable[bytes] | None,
    body_headers: RawHeaders,
    max_body_bytes: int,
) -> PassthroughResult:
    """Send the request (streaming ``body``) through the passthrough pipeline and wait for
    the response head.

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

    stats = CallStats(scope)
    spec = CallSpec(backend, ctx.guards.get(backend.guard_name), None, stats)
    # a Content-Type the config sets replaces the client's, as for forwarded fields
    body_headers = [(k, v) for k, v in body_headers if k not in backend.configured_names]
    terminal = Streaming(client, method, upload(body) if body is not None else None, body_headers)
    stack = compose(spec, PASSTHROUGH, terminal)
    reply: Reply | None = None
    with scope:
        reply = await stack.send(build_request(backend, ctx, default_accept=False))
    if reply is None:
        reply = Reply(Outcome.TIMEOUT, detail=f"no response head within {timeout_s:g}s")
    if reply.stream is None:
        status = 504 if reply.outcome == Outcome.TIMEOUT else 502
        return PassthroughResult(
            reply.outcome, status, [], None, f"{backend.name}={reply.outcome}", reply.detail
        )
    return PassthroughResult(
        reply.outcome,
        reply.status,
        passed_back(reply.headers),
        _stream_body(reply.stream, timeout_s),
        f"{backend.name}={reply.outcome}",
    )


async def _stream_body(body: OpenBody, gap_s: float) -> AsyncIterator[bytes]:
    """Yield raw (still encoded) body chunks; each wait is bounded by ``gap_s``."""
    try:
        chunks = body.response.aiter_raw().__aiter__()
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
        await body.aclose()
