"""Fuzz targets: config loading and request building must fail only in documented ways.

Each target takes bytes, as fuzzers give them. The normal test run replays the committed
seed corpus (``corpus/``) and a few hundred hypothesis mutations of it; a longer run:

    FUZZ_EXAMPLES=50000 .venv/bin/python -m pytest tests/test_fuzz.py

Invariants:

- ``config``: any text either compiles or raises ``ConfigError`` whose every problem names
  the file; nothing else escapes.
- ``request``: any raw target routed against the corpus's graph and demo configs either is
  refused with a ``RequestError`` or builds upstream requests whose scheme, host, port and
  base path are exactly the config's, with no CR, LF or NUL in any header.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx

from gateway import ConfigError, RequestError, load_config
from gateway._call.request import UpstreamRequest, build_requests
from gateway._config.plan import GatewayPlan
from gateway._endpoint import build_context
from gateway._rules.aggregate import BackendResult, Outcome
from gateway._rules.template import UnresolvedReference

CORPUS = Path(__file__).parent / "corpus"


def fuzz_config(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        load_config("fuzz.yaml", {"USERS_TOKEN": "t"}, text=text)
    except ConfigError as exc:
        assert exc.problems
        assert all(p.file == "fuzz.yaml" for p in exc.problems)


def _plans() -> list[GatewayPlan]:
    return [load_config(str(CORPUS / "config" / name), {}) for name in ("graph.yaml", "demo.yaml")]


PLANS = _plans()
# What a backend that others reference answered, so dependents can be built too.
FAKE_RESULT = BackendResult(
    Outcome.OK,
    selected={"items": [{"id": "x"}, {"id": 7}], "k": "v", "z": 1, "tier": "gold", "id": "1"},
)


def fuzz_request(data: bytes) -> None:
    raw = data.decode("latin-1")
    path, _, query = raw.partition("?")
    for plan in PLANS:
        for method in ("GET", "POST"):
            try:
                match = plan.router.match(path, method)
            except RequestError:
                continue
            scope = {
                "type": "http",
                "method": method,
                "scheme": "http",
                "raw_path": path.encode("latin-1"),
                "query_string": query.encode("latin-1"),
                "headers": [(b"host", b"gw"), (b"x-tenant", query.encode("latin-1")[:64])],
                "client": ("127.0.0.1", 1234),
            }
            try:
                ctx = build_context(match.target, match.params, scope, b'{"items": [1]}')
            except RequestError:
                continue  # a client value a backend needs is missing or unsafe: a 400
            results = [FAKE_RESULT] * len(match.target.backends)
            for backend in match.target.backends:
                try:
                    requests = build_requests(backend, ctx, results)
                except (UnresolvedReference, httpx.InvalidURL):
                    continue
                for request in requests:
                    _check(request, backend.upstream.base.origin, backend.upstream.base.base_path)


def _check(request: UpstreamRequest, origin: str, base_path: str) -> None:
    url = urlsplit(request.url)
    assert f"{url.scheme}://{url.hostname}:{url.port}" == origin, (request.url, origin)
    assert url.path.startswith(base_path + "/"), (request.url, base_path)
    assert not url.fragment
    for name, value in request.headers:
        assert not any(c in value for c in b"\r\n\x00"), (name, value)
