"""``gateway.asgi:app`` for plain hypercorn: ``GATEWAY_CONFIG=FILE hypercorn -k trio gateway.asgi:app``.

A config that cannot be used stops the import with its problems on stderr and status 2.
Under ``gateway serve --workers N`` (which sets ``GATEWAY_STARTUP_REPORT``) the worker
writes the problems to that file instead, and the main process prints them once.
"""

from __future__ import annotations

import os
import sys

from ._app import GatewayApp, create_app
from ._config.compile import load_config
from ._errors import ConfigError
from ._observability.logs import configure_logging
from ._server import CONFIG_ENV, STARTUP_REPORT_ENV


def _fail(message: str) -> SystemExit:
    """Report why this process cannot serve; the caller raises what is returned."""
    report = os.environ.get(STARTUP_REPORT_ENV)
    if report:
        try:
            # the first worker to fail writes the report; the others add nothing
            with open(report, "x", encoding="utf-8") as file:
                file.write(message + "\n")
        except FileExistsError:
            pass
        except OSError:
            print(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)
    return SystemExit(2)


def _load() -> GatewayApp:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise _fail(f"gateway: set {CONFIG_ENV} to the config file's path")
    try:
        plan = load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    server = plan.config.server
    log_format = os.environ.get("GATEWAY_LOG_FORMAT", server.log_format)
    configure_logging(
        "text" if log_format == "text" else "json",
        os.environ.get("GATEWAY_LOG_LEVEL", server.log_level),
    )
    return create_app(plan)


app = _load()
