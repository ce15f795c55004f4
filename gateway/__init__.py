"""An API-aggregation gateway built on trio's structured concurrency.

The public API is what this module exports; everything in ``gateway._*`` is private.

The names are imported on first use (PEP 562), so that ``gateway serve`` can set up its
signal handling before the heavy imports (quart, hypercorn, pydantic) rather than a second
later.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
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
    from ._errors import InvalidHeader as InvalidHeader
    from ._errors import InvalidPathParameter as InvalidPathParameter
    from ._errors import InvalidQueryParameter as InvalidQueryParameter
    from ._errors import InvalidRequest as InvalidRequest
    from ._errors import InvalidRequestBody as InvalidRequestBody
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

_MODULES = {
    "GatewayApp": "._app",
    "create_app": "._app",
    "compile_config": "._config.compile",
    "load_config": "._config.compile",
    "GatewayConfig": "._config.model",
    "json_schema": "._config.model",
    "GatewayPlan": "._config.plan",
    "ConfigError": "._errors",
    "ConfigProblem": "._errors",
    "GatewayError": "._errors",
    "InvalidPathParameter": "._errors",
    "InvalidRequestBody": "._errors",
    "InvalidQueryParameter": "._errors",
    "InvalidHeader": "._errors",
    "InvalidRequest": "._errors",
    "ListenError": "._errors",
    "MethodNotAllowed": "._errors",
    "NotFound": "._errors",
    "RequestBodyTooLarge": "._errors",
    "RequestError": "._errors",
    "Aggregate": "._rules.aggregate",
    "BackendResult": "._rules.aggregate",
    "Outcome": "._rules.aggregate",
    "hypercorn_config": "._server",
    "serve_app": "._server",
    "GatewayTransport": "._upstream.transport",
    "PoolLimits": "._upstream.transport",
    "PoolStatistics": "._upstream.transport",
}

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
    "InvalidHeader",
    "InvalidPathParameter",
    "InvalidQueryParameter",
    "InvalidRequest",
    "InvalidRequestBody",
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


def __getattr__(name: str) -> object:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
