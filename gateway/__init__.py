"""An API-aggregation gateway built on trio's structured concurrency.

The public API is what this module exports; everything in ``gateway._*`` is private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._app import GatewayApp as GatewayApp
from ._app import create_app as create_app
from ._config.compile import compile_config as compile_config
from ._config.compile import load_config as load_config
from ._config.model import GatewayConfig as GatewayConfig
from ._config.model import json_schema as json_schema
from ._config.plan import GatewayPlan as GatewayPlan
from ._errors import ConfigError as ConfigError
from ._errors import ConfigProblem as ConfigProblem
from ._errors import GatewayError as GatewayError
from ._errors import InvalidPathParameter as InvalidPathParameter
from ._errors import InvalidRequest as InvalidRequest
from ._errors import ListenError as ListenError
from ._errors import MethodNotAllowed as MethodNotAllowed
from ._errors import NotFound as NotFound
from ._errors import RequestBodyTooLarge as RequestBodyTooLarge
from ._errors import RequestError as RequestError
from ._rules.aggregate import Aggregate as Aggregate
from ._rules.aggregate import BackendResult as BackendResult
from ._rules.aggregate import Outcome as Outcome
from ._server import hypercorn_config as hypercorn_config
from ._server import serve_app as serve_app
from ._upstream.transport import GatewayTransport as GatewayTransport
from ._upstream.transport import PoolLimits as PoolLimits
from ._upstream.transport import PoolStatistics as PoolStatistics

__all__ = [
    "Aggregate",
    "BackendResult",
    "ConfigError",
    "ConfigProblem",
    "GatewayApp",
    "GatewayConfig",
    "GatewayError",
    "GatewayPlan",
    "GatewayTransport",
    "InvalidPathParameter",
    "InvalidRequest",
    "ListenError",
    "MethodNotAllowed",
    "NotFound",
    "Outcome",
    "PoolLimits",
    "PoolStatistics",
    "RequestBodyTooLarge",
    "RequestError",
    "compile_config",
    "create_app",
    "hypercorn_config",
    "json_schema",
    "load_config",
    "serve_app",
]
