"""The config reference (docs/config.md), generated from the models' field docstrings.

``gateway schema --markdown > docs/config.md`` writes it; a test checks the committed file
is current, so the reference cannot drift from the code.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .auth_model import (
    ApiKeyConfig,
    AuthPolicyConfig,
    ForwardAuthConfig,
    JwtConfig,
    RequireConfig,
)
from .model import (
    BackendCacheConfig,
    BackendConfig,
    BodyConfig,
    BulkheadConfig,
    CircuitBreakerConfig,
    CompressionConfig,
    ConditionConfig,
    CorsConfig,
    DefaultsConfig,
    EndpointCacheConfig,
    EndpointConfig,
    GatewayConfig,
    GraphQLConfig,
    HedgeConfig,
    MergeConfig,
    OutlierDetectionConfig,
    RateLimitConfig,
    RetryConfig,
    ServerConfig,
    ServerTLSConfig,
    ShapeConfig,
    StateConfig,
    TracingConfig,
    UpstreamConfig,
    WebSocketConfig,
)
from .units import format_duration

SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("Top level", GatewayConfig),
    ("`server`", ServerConfig),
    ("`server.tls`", ServerTLSConfig),
    ("`defaults`", DefaultsConfig),
    ("`defaults.cors`", CorsConfig),
    ("`defaults.compression`", CompressionConfig),
    ("`upstreams.NAME`", UpstreamConfig),
    ("`upstreams.NAME.retries`", RetryConfig),
    ("`upstreams.NAME.circuit_breaker`", CircuitBreakerConfig),
    ("`upstreams.NAME.bulkhead`", BulkheadConfig),
    ("`upstreams.NAME.hedge`", HedgeConfig),
    ("`upstreams.NAME.outlier_detection`", OutlierDetectionConfig),
    ("`endpoints[]`", EndpointConfig),
    ("`endpoints[].websocket`", WebSocketConfig),
    ("`endpoints[].rate_limit`", RateLimitConfig),
    ("`endpoints[].cache`", EndpointCacheConfig),
    ("`endpoints[].merge`", MergeConfig),
    ("`endpoints[].shape`", ShapeConfig),
    ("`endpoints[].backends[]`", BackendConfig),
    ("`endpoints[].backends[].when`", ConditionConfig),
    ("`endpoints[].backends[].body`", BodyConfig),
    ("`endpoints[].backends[].graphql`", GraphQLConfig),
    ("`endpoints[].backends[].cache`", BackendCacheConfig),
    ("`tracing`", TracingConfig),
    ("`state`", StateConfig),
    ("`auth.NAME`", AuthPolicyConfig),
    ("`auth.NAME.jwt`", JwtConfig),
    ("`auth.NAME.api_key`", ApiKeyConfig),
    ("`auth.NAME.forward`", ForwardAuthConfig),
    ("`auth.NAME.require`", RequireConfig),
)

DURATION_FIELDS = frozenset(
    {
        "timeout",
        "deadline",
        "idle_timeout",
        "graceful_timeout",
        "send_timeout",
        "body_timeout",
        "drain_delay",
        "backoff",
        "window",
        "open_for",
        "queue_timeout",
        "ejection",
        "max_ejection",
        "ttl",
        "max_age",
    }
)
SIZE_FIELDS = frozenset(
    {
        "max_response_size",
        "max_message_size",
        "max_request_body",
        "max_header_size",
        "max_total_response_size",
        "memory_max_size",
        "min_size",
    }
)


PERCENT_FIELDS = frozenset({"budget", "failure_ratio", "max_ejected"})


def _type_name(name: str, field: FieldInfo) -> str:
    if name in PERCENT_FIELDS:
        return "percentage"
    if name in DURATION_FIELDS:
        return "duration"
    if name in SIZE_FIELDS:
        return "size"
    if name == "method":
        return "method"
    if name == "allow_methods":
        return "list of method"
    return _annotation_name(field.annotation)


def _annotation_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_annotation_name(a) for a in args)
    if origin is list:
        return f"list of {_annotation_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if origin is typing.Literal:
        # YAML spells the booleans in lower case
        return " or ".join(
            str(a).lower() if isinstance(a, bool) else repr(a) for a in typing.get_args(annotation)
        )
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return {float: "duration", int: "integer", str: "string", bool: "boolean"}.get(
        annotation, "any JSON"
    )


def _format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _default(field: FieldInfo, name: str) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{value!r}`".replace("'", '"')
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if name in PERCENT_FIELDS:
        return f"`{value * 100:g}%`"
    if name in DURATION_FIELDS:
        return f"`{format_duration(value)}`"
    if name in SIZE_FIELDS:
        return f"`{_format_size(value)}`"
    return f"`{value}`"


def config_reference_markdown() -> str:
    lines = [
        "# Config reference (version 1)",
        "",
        "Generated from the config models by `gateway schema --markdown`; do not edit by hand.",
        "Durations are strings with a unit (`250ms`, `2s`, `1.5s`, `1m`, `1h`); a bare number",
        "is an error. Sizes are byte counts or strings with a unit (`512KiB`, `16MiB`, `1MB`).",
        "Any string value may use `${VAR}` (an unset variable is a config error),",
        "`${VAR:-default}`, and `$$` for a literal `$`. Unknown keys are errors.",
        "",
    ]
    for title, model in SECTIONS:
        lines += [f"## {title}", ""]
        if model.__doc__:
            lines += [" ".join(model.__doc__.split()), ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            desc = " ".join((field.description or "").split()).replace("|", "\\|")
            lines.append(
                f"| `{field.alias or name}` | {_type_name(name, field)} | {_default(field, name)} | {desc} |"
            )
        lines.append("")
    return "\n".join(lines)
