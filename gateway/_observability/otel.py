"""Optional span export through the OpenTelemetry SDK (the ``otel`` extra).

Without ``tracing:`` in the config nothing here runs: trace context is still propagated
(``_tracing``) at the cost of two headers per upstream call. With it, every request gets a
server span (child of the incoming ``traceparent``) and every backend a client span (its
id is the one sent upstream), exported over OTLP/HTTP by the SDK's batch processor.

The SDK's batch processor exports from a thread of its own; it is started with the app
and shut down (flushing what is left) when the app stops.
"""

from __future__ import annotations

import importlib
from typing import Any

OTEL_MISSING = "tracing needs the otel extra: pip install 'trio-aggregation-gateway[otel]'"


# what SpanExporter imports: the SDK and the OTLP/HTTP exporter, both in the otel extra
OTEL_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


def otel_available() -> bool:
    """Whether the otel extra is installed. The modules are imported (only when a config
    has ``tracing:``): ``find_spec`` of a submodule raises when its package is missing, and
    a half-installed extra (the API without the SDK or the exporter) must count as missing.
    """
    for name in OTEL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return False
    return True


class SpanExporter:
    """Creates spans for requests and backend calls and exports them over OTLP/HTTP."""

    def __init__(self, endpoint: str, service_name: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("trio-aggregation-gateway")

    def start_request(self, name: str, parent: tuple[bytes, bytes, bytes] | None) -> Any:
        """A server span: child of the incoming ``(trace_id, span_id, flags)`` when there
        was one, else the root of a new trace."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        context = None
        if parent is not None:
            trace_id, span_id, flags = parent
            remote = SpanContext(
                trace_id=int(trace_id, 16),
                span_id=int(span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(flags, 16)),
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        return self._tracer.start_span(name, context=context, kind=SpanKind.SERVER)

    @staticmethod
    def ids(span: Any) -> tuple[bytes, bytes, bytes]:
        """``(trace_id, span_id, flags)`` of a span, as traceparent hex."""
        ctx = span.get_span_context()
        return b"%032x" % ctx.trace_id, b"%016x" % ctx.span_id, b"%02x" % ctx.trace_flags

    def start_backend(self, request_span: Any, name: str) -> Any:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        context = trace.set_span_in_context(request_span)
        return self._tracer.start_span(f"backend {name}", context=context, kind=SpanKind.CLIENT)

    def force_flush(self) -> None:
        self._provider.force_flush()

    def shutdown(self) -> None:
        self._provider.shutdown()
