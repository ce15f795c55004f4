"""Which settings a reload applies, and which keep their value until a restart. Pure.

A reload swaps the plan that requests are served with. Some settings are read only when
the gateway starts: the listening sockets (``server.bind``, ``admin_bind``, ``backlog``),
the worker processes (``workers``), logging (``log_format``, ``log_level``), the state
store (``state``), span export (``tracing``) and whether the listener speaks TLS at all.
A reload cannot apply a change to them, so it keeps the values in effect, and the config
the gateway shows (``/__gateway/config``) is the one it really runs with.

``graceful_timeout`` and ``max_header_size`` (the HTTP/1.1 parser's buffer) are settings of
the serving hypercorn config, which a reload updates in place when it has it
(``live_listener``); without it they too need a restart. Everything else, including the
certificate files of ``server.tls``, applies to the next request or connection.
"""

from __future__ import annotations

from typing import Any

from .model import GatewayConfig

# read once, when the gateway starts
RESTART_ONLY_SERVER = ("bind", "workers", "backlog", "admin_bind", "log_format", "log_level")
# hypercorn settings a reload applies to the serving listener's config
LIVE_LISTENER_SERVER = ("graceful_timeout", "max_header_size")
RESTART_ONLY_SECTIONS = ("state", "tracing")


def keep_restart_only(
    running: GatewayConfig, loaded: GatewayConfig, *, live_listener: bool
) -> tuple[GatewayConfig, tuple[str, ...]]:
    """The config a reload puts in effect: ``loaded``, with the values of ``running`` for
    every setting that needs a restart to change.

    Args:
        running: the config in effect.
        loaded: the config just read from the file (valid).
        live_listener: whether the reload can update the serving hypercorn config.

    Returns:
        The config in effect after the reload, and the dotted names of the settings whose
        change waits for a restart (``server.bind``, ``server.tls`` for turning TLS on or
        off, ``state``), in the order of the config reference.
    """
    restart_only = RESTART_ONLY_SERVER + (() if live_listener else LIVE_LISTENER_SERVER)
    kept_server: dict[str, Any] = {
        name: getattr(running.server, name)
        for name in restart_only
        if getattr(running.server, name) != getattr(loaded.server, name)
    }
    if (running.server.tls is None) != (loaded.server.tls is None):
        kept_server["tls"] = running.server.tls  # new certificate files apply, on/off not
    kept: dict[str, Any] = {
        name: getattr(running, name)
        for name in RESTART_ONLY_SECTIONS
        if getattr(running, name) != getattr(loaded, name)
    }
    pending = [f"server.{name}" for name in kept_server] + list(kept)
    if kept_server:
        kept["server"] = loaded.server.model_copy(update=kept_server)
    if not kept:
        return loaded, ()
    return loaded.model_copy(update=kept), tuple(pending)
