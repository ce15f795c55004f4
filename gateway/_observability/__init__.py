"""Observability: access logs, Prometheus metrics, trace context, OpenTelemetry."""
