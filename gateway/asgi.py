"""``gateway.asgi:app`` for plain hypercorn: ``GATEWAY_CONFIG=FILE hypercorn -k trio gateway.asgi:app``."""

from __future__ import annotations

import os
import sys

from ._app import GatewayApp, create_app
from ._config.compile import load_config
from ._errors import ConfigError
from ._observability.logs import configure_logging
from ._server import CONFIG_ENV


def _load() -> GatewayApp:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        print(f"gateway: set {CONFIG_ENV} to the config file's path", file=sys.stderr)
        raise SystemExit(2)
    try:
        plan = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    server = plan.config.server
    log_format = os.environ.get("GATEWAY_LOG_FORMAT", server.log_format)
    configure_logging(
        "text" if log_format == "text" else "json",
        os.environ.get("GATEWAY_LOG_LEVEL", server.log_level),
    )
    return create_app(plan)


app = _load()
