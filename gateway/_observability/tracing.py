"""Request ids and W3C trace context (pure, apart from random ids).

- ``X-Request-Id``: taken from the client when it is a sane token (letters, digits and
  ``._:-``, at most 128 characters), otherwise generated. Sent to every upstream call and
  back to the client, and written in every log line and error body.
- ``traceparent`` / ``tracestate`` (W3C Trace Context, level 1): an incoming valid trace
  continues through the gateway; each backend call gets a header with its own new span id
  as the child. An invalid or missing ``traceparent`` starts a new trace.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_random = random.Random()
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


def new_id(size: int) -> bytes:
    """``size`` random bytes as lower-case hex (ids, not secrets: no syscall per id)."""
    return b"%0*x" % (size * 2, _random.getrandbits(size * 8))


@dataclass(frozen=True)
class TraceContext:
    """What one request carries: its id and the trace it belongs to."""

    request_id: bytes
    trace_id: bytes
    span_id: bytes  # the gateway's own span for this request
    flags: bytes
    tracestate: bytes | None = None
    parent_span_id: bytes | None = None  # the incoming traceparent's span, if valid
    span: Any = None  # the exported server span (with the otel extra), else None
    exporter: Any = None

    def child_headers(self, span_id: bytes | None = None) -> list[tuple[bytes, bytes]]:
        """Headers for one upstream call: ``span_id`` (or a fresh one) as the child of the
        gateway's span."""
        child = span_id or new_id(8)
        headers = [
            (b"x-request-id", self.request_id),
            (b"traceparent", b"00-" + self.trace_id + b"-" + child + b"-" + self.flags),
        ]
        if self.tracestate:
            headers.append((b"tracestate", self.tracestate))
        return headers

    @property
    def traceparent(self) -> bytes:
        return b"00-" + self.trace_id + b"-" + self.span_id + b"-" + self.flags


def trace_context(headers: Sequence[tuple[bytes, bytes]]) -> TraceContext:
    """Read ``x-request-id``, ``traceparent`` and ``tracestate`` from raw request headers."""
    request_id = traceparent = tracestate = None
    for name, value in headers:
        if name == b"x-request-id":
            request_id = value
        elif name == b"traceparent":
            traceparent = value
        elif name == b"tracestate":
            tracestate = value
    if request_id is None or not _REQUEST_ID.fullmatch(request_id):
        request_id = new_id(16)
    match = _TRACEPARENT.fullmatch(traceparent.strip().lower()) if traceparent else None
    if (
        match is None
        or match.group(1) == b"ff"
        or match.group(2) == _ZERO_TRACE
        or match.group(3) == _ZERO_SPAN
    ):
        # no usable parent: a new trace, and an incoming tracestate belongs to no trace
        return TraceContext(request_id, new_id(16), new_id(8), b"01")
    if tracestate is not None and (len(tracestate) > 512 or b"\n" in tracestate):
        tracestate = None
    return TraceContext(
        request_id, match.group(2), new_id(8), match.group(4), tracestate, match.group(3)
    )


CURRENT: ContextVar[TraceContext | None] = ContextVar("gateway_trace", default=None)
"""The trace context of the request being handled (set per request by the app; trio
copies context into child tasks, so the fan-out's tasks see it too)."""


def with_request_id(body: Any) -> Any:
    """Add the current request id to an error body: ``{"error": {..., "request_id"}}``."""
    trace = CURRENT.get()
    if trace is not None and isinstance(body, dict) and isinstance(body.get("error"), dict):
        body["error"]["request_id"] = trace.request_id.decode()
    return body
