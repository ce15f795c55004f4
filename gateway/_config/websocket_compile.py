"""Compiling an endpoint's ``websocket`` settings into a
:class:`~gateway._config.plan.WebSocketPlan`, at load.

Problems, each with its path: ``websocket`` on an endpoint that is not ``passthrough`` (the
relay is a passthrough of one backend) or whose method is not GET (RFC 6455 section 4.1:
the opening handshake is a GET); ``allow_origins`` entries that are not origins as browsers
send them (the rules of ``cors.allow_origins``, :mod:`.cors_compile`); a
``forward_headers`` entry naming a field of the handshake itself (``Sec-WebSocket-*``,
``Upgrade``, ``Connection``), which each hop makes for its own connection.
"""

from __future__ import annotations

from .._errors import ConfigProblem
from .._rules.websocket import HANDSHAKE_FIELDS
from .cors_compile import compile_cors
from .load import format_path
from .model import CorsConfig, EndpointConfig, WebSocketConfig
from .plan import WebSocketPlan

Where = tuple[int | str, ...]


def compile_websocket(
    ep: EndpointConfig, where: Where, file: str, problems: list[ConfigProblem]
) -> WebSocketPlan | None:
    """The endpoint's plan (None when ``websocket`` is false); problems are added to
    ``problems`` (the plan is then not to be used)."""
    if ep.websocket is False:
        return None
    at = (*where, "websocket")

    def problem(key: Where, message: str) -> None:
        problems.append(ConfigProblem(file, format_path(key), message))

    if not ep.passthrough:
        problem(at, "WebSockets are relayed by passthrough endpoints: add passthrough: true")
    if ep.method != "GET":
        problem(
            at,
            f"a WebSocket opening handshake is a GET request (RFC 6455 section 4.1): "
            f"the endpoint's method is {ep.method}",
        )
    for index, name in enumerate(ep.forward_headers):
        if name.lower().encode("latin-1", "replace") in HANDSHAKE_FIELDS:
            problem(
                (*where, "forward_headers", index),
                f"{name} belongs to the WebSocket handshake, which the gateway makes for "
                "each side itself (subprotocols are passed on without it)",
            )
    settings = ep.websocket if isinstance(ep.websocket, WebSocketConfig) else WebSocketConfig()
    origins = None
    if settings.allow_origins is not None:
        origins = compile_cors(
            CorsConfig(allow_origins=settings.allow_origins), "GET", at, file, problems
        )
    return WebSocketPlan(
        max_message_bytes=settings.max_message_size,
        idle_timeout_s=settings.idle_timeout,
        max_connections=settings.max_connections,
        origins=origins,
    )
