"""The public API is exactly what ``gateway/__init__.py`` exports; everything under
``gateway._*`` is private."""

from __future__ import annotations

import subprocess
import sys
import types

import gateway

PUBLIC_NAMES = [
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


def test_all_lists_exactly_the_public_names() -> None:
    assert sorted(gateway.__all__) == PUBLIC_NAMES


def test_every_name_in_all_is_importable_from_gateway() -> None:
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from gateway import *", namespace)
    assert sorted(n for n in namespace if n != "__builtins__") == PUBLIC_NAMES


def test_no_public_attribute_is_missing_from_all() -> None:
    for name in gateway.__all__:  # the names are imported on first use
        getattr(gateway, name)
    public = {
        name
        for name, value in vars(gateway).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(gateway.__all__)


def test_the_gateway_command_starts_without_the_heavy_imports() -> None:
    """``gateway serve`` ignores SIGHUP before it imports quart, hypercorn or pydantic (a
    second on a loaded machine), so the package itself imports them only on first use."""
    code = (
        "import sys, gateway, gateway._entry; "
        "print(sorted(m for m in ('quart', 'hypercorn', 'pydantic', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_gateway_without_jwt_policies_does_not_load_the_jwt_libraries() -> None:
    """PyJWT and cryptography add a tenth to the objects the collector walks: measured
    at about 6% of the CPU of an aggregated request (`bench/hotpath.py`) when loaded for
    nothing."""
    code = (
        "import sys\n"
        "from gateway import create_app, load_config\n"
        'text = \'version: 1\\nupstreams: {u: {url: "http://127.0.0.1:9"}}\\n'
        "endpoints: [{path: /a, backends: [{name: a, upstream: u, path: /a}]}]\\n'\n"
        "create_app(load_config('g.yaml', {}, text=text))\n"
        "print(sorted(m for m in ('jwt', 'cryptography') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
