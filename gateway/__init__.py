"""An API-aggregation gateway built on trio's structured concurrency.

The public API is what this module exports; everything in ``gateway._*`` is private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._aggregate import Aggregate as Aggregate
from ._aggregate import BackendResult as BackendResult
from ._aggregate import Outcome as Outcome
from ._app import GatewayApp as GatewayApp
from ._app import create_app as create_app
from ._compile import compile_config as compile_config
from ._compile import load_config as load_config
from ._config_model import GatewayConfig as GatewayConfig
from ._config_model import json_schema as json_schema
from ._errors import ConfigError as ConfigError
from ._errors import ConfigProblem as ConfigProblem
from ._errors import GatewayError as GatewayError
from ._errors import InvalidPathParameter as InvalidPathParameter
from ._errors import InvalidRequest as InvalidRequest
from ._errors import MethodNotAllowed as MethodNotAllowed
from ._errors import NotFound as NotFound
from ._errors import RequestBodyTooLarge as RequestBodyTooLarge
from ._errors import RequestError as RequestError
from ._plan import GatewayPlan as GatewayPlan
from ._server import hypercorn_config as hypercorn_config
from ._server import serve_app as serve_app
from ._transport import GatewayTransport as GatewayTransport
from ._transport import PoolLimits as PoolLimits
from ._transport import PoolStatistics as PoolStatistics
