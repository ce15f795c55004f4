"""``gateway.asgi:app`` for plain hypercorn: ``GATEWAY_CONFIG=FILE hypercorn -k trio gateway.asgi:app``."""

from __future__ import annotations

import os
import sys

from ._app import GatewayApp, create_app
from ._compile import load_config
from ._errors import ConfigError
from ._server import CONFIG_ENV


def _load() -> GatewayApp:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        print(f"gateway: set {CONFIG_ENV} to the config file's path", file=sys.stderr)
        raise SystemExit(2)
    try:
        return create_app(load_config(path))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


app = _load()
