"""CORS over real sockets: preflights answered by the gateway (no upstream call, before
authentication and rate limits), the fields of actual requests on every answer of an
endpoint (errors and passthrough included), refusals, and the config's problems."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import trio
from conftest import Gateway, backend_config, recorder, start_gateway, start_upstream
from upstream import Reply

from gateway._cli import main

APP = "https://app.example"
SECRET = "an-hmac-secret-of-32-bytes-or-more!"
TIMEOUT_S = 10
CREDENTIALED = {
    "allow_origins": [APP, "regex:^https://[a-z0-9-]+\\.shop\\.example$"],
    "allow_headers": ["Authorization", "Content-Type"],
    "expose_headers": ["X-Request-Id", "X-Gateway-Backends"],
    "allow_credentials": True,
    "max_age": "10m",
}
ACA = "access-control-allow-"


def config(up_url: str, endpoints: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"version": 1, "upstreams": {"u": {"url": up_url}}, "endpoints": endpoints, **top}


def endpoint(path: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "backends": [backend_config("a", "u", "/a")], **extra}


async def ask(
    gw: Gateway, path: str, method: str, origin: str = APP, headers: str | None = None
) -> httpx.Response:
    """A preflight as a browser sends it."""
    fields = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        fields["Access-Control-Request-Headers"] = headers
    return await gw.request("OPTIONS", path, headers=fields)


def cors_fields(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def vary(response: httpx.Response) -> list[str]:
    """The names of every Vary line, in order, without Accept-Encoding (compression, on by
    default, adds it to every answer of an endpoint)."""
    names = [n.strip() for line in response.headers.get_list("vary") for n in line.split(",")]
    return [n for n in names if n and n.lower() != "accept-encoding"]


def token() -> str:
    now = int(time.time())
    return pyjwt.encode({"sub": "alice", "exp": now + 60}, SECRET, algorithm="HS256")


# --- preflights ------------------------------------------------------------------------


async def test_a_preflight_is_answered_by_the_gateway_without_an_upstream_call(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [endpoint("/api", response_headers={"X-Frame-Options": "DENY"})],
                defaults={"cors": CREDENTIALED},
            ),
        )
        r = await ask(gw, "/api", "GET", headers="authorization,content-type")
        assert r.status_code == 204
        assert r.content == b""
        assert cors_fields(r) == {
            f"{ACA}origin": APP,
            f"{ACA}credentials": "true",
            f"{ACA}methods": "GET, HEAD",  # the endpoint's method, and HEAD with GET
            f"{ACA}headers": "authorization, content-type",
            "access-control-max-age": "600",
        }
        assert r.headers["vary"] == (
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        )
        assert r.headers["x-frame-options"] == "DENY"  # the endpoint's response_headers
        assert "x-request-id" in r.headers
        # HEAD is asked for on the GET endpoint
        assert (await ask(gw, "/api", "HEAD")).status_code == 204
        assert seen == []


async def test_a_preflight_comes_before_authentication(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        seen, handler = recorder(lambda req: Reply(json={"me": 1}))
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [endpoint("/me", auth="users", cors=CREDENTIALED)],
                auth={"users": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}},
            ),
        )
        # no token: a browser never sends credentials with a preflight
        r = await ask(gw, "/me", "GET", headers="authorization")
        assert r.status_code == 204
        assert r.headers[f"{ACA}origin"] == APP
        refused = await gw.get("/me", headers={"Origin": APP})
        assert refused.status_code == 401
        # a 401 the page can read: the browser would hide it without these
        assert refused.headers[f"{ACA}origin"] == APP
        assert refused.headers[f"{ACA}credentials"] == "true"
        assert vary(refused) == ["Origin"]
        assert seen == []
        ok = await gw.get("/me", headers={"Origin": APP, "Authorization": f"Bearer {token()}"})
        assert ok.status_code == 200 and ok.json() == {"me": 1}
        assert ok.headers[f"{ACA}origin"] == APP
        assert ok.headers["access-control-expose-headers"] == "X-Request-Id, X-Gateway-Backends"


async def test_preflights_do_not_use_up_a_rate_limit_and_a_429_carries_the_fields(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/a": Reply(json={"a": 1})})
        limited = endpoint("/api", rate_limit={"rate": "1/h", "burst": 1, "key": "global"})
        gw = await start_gateway(
            nursery, config(up.url, [limited], defaults={"cors": CREDENTIALED})
        )
        for _ in range(3):
            assert (await ask(gw, "/api", "GET")).status_code == 204
        first = await gw.get("/api", headers={"Origin": APP})
        assert first.status_code == 200  # the preflights counted for nothing
        second = await gw.get("/api", headers={"Origin": APP})
        assert second.status_code == 429
        assert "retry-after" in second.headers
        assert second.headers[f"{ACA}origin"] == APP
        assert second.headers[f"{ACA}credentials"] == "true"
        assert up.calls("/a") == 1


async def test_refused_preflights_are_403_naming_what_and_carry_no_allow_fields(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [endpoint("/api"), endpoint("/api", method="POST")],
                defaults={"cors": CREDENTIALED},
            ),
        )
        cases = [
            (("GET", "https://evil.example"), "origin", "this origin is not allowed"),
            (("GET", "http://app.example"), "origin", "not allowed"),  # another scheme
            (("GET", "https://app.example:8443"), "origin", "not allowed"),  # another port
            (("GET", "https://shop.example"), "origin", "not allowed"),  # outside the pattern
            (("DELETE", APP), "method", "no endpoint here takes DELETE"),
            (("GET", APP, "authorization,x-debug"), "headers", "not allowed: x-debug"),
        ]
        for args, refused, message in cases:
            r = await ask(gw, "/api", *args)
            assert r.status_code == 403, args
            error = r.json()["error"]
            assert error["code"] == "cors_preflight_refused"
            assert error["refused"] == refused
            assert message in error["message"]
            assert not any(k.startswith(ACA) for k in r.headers), args
        assert seen == []


async def test_a_preflight_is_routed_by_the_method_it_asks_about(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/a": Reply(json={})})
        other = {"allow_origins": ["https://admin.example"], "allow_headers": ["X-Csrf"]}
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [
                    endpoint("/items", cors=CREDENTIALED),
                    endpoint("/items", method="POST", cors=other),
                    endpoint("/items", method="DELETE", cors=False),
                ],
            ),
        )
        assert (await ask(gw, "/items", "GET")).status_code == 204
        assert (await ask(gw, "/items", "POST")).status_code == 403  # POST's own origins
        post = await ask(gw, "/items", "POST", "https://admin.example", "x-csrf")
        assert post.status_code == 204
        assert cors_fields(post) == {
            f"{ACA}origin": "https://admin.example",
            f"{ACA}methods": "POST",
            f"{ACA}headers": "x-csrf",
        }
        # DELETE has no CORS: as for any OPTIONS
        plain = await ask(gw, "/items", "DELETE")
        assert plain.status_code == 204
        assert plain.headers["allow"] == "DELETE, GET, HEAD, POST, OPTIONS"
        assert cors_fields(plain) == {}


class AccessLines(logging.Handler):
    """The access log's records; ``done`` is set once ``wanted`` have been written (by the
    server's request task, just after the client has the last byte)."""

    def __init__(self, wanted: int) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict[str, Any]] = []
        self.wanted = wanted
        self.done = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.access)  # type: ignore[attr-defined]
        if len(self.lines) >= self.wanted:
            self.done.set()


async def test_a_preflight_is_logged_under_the_configured_path(nursery: trio.Nursery) -> None:
    """The endpoint label of the access log and the metrics is a configured path, never
    the client's (a refused method has no endpoint: the path's endpoint with CORS)."""
    access = logging.getLogger("gateway.access")
    lines = AccessLines(2)
    access.addHandler(lines)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        with trio.fail_after(TIMEOUT_S):
            up = await start_upstream(nursery, {"/a": Reply(json={})})
            gw = await start_gateway(
                nursery, config(up.url, [endpoint("/items/{id}")], defaults={"cors": CREDENTIALED})
            )
            assert (await ask(gw, "/items/7", "GET")).status_code == 204
            assert (await ask(gw, "/items/8", "DELETE")).status_code == 403
            await lines.done.wait()
    finally:
        access.removeHandler(lines)
        access.setLevel(level)
    assert [(line["path"], line["endpoint"], line["status"]) for line in lines.lines] == [
        ("/items/7", "/items/{id}", 204),
        ("/items/8", "/items/{id}", 403),
    ]


async def test_options_that_is_not_a_preflight_and_an_unknown_path_are_as_before(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/a": Reply(json={})})
        gw = await start_gateway(
            nursery, config(up.url, [endpoint("/api")], defaults={"cors": CREDENTIALED})
        )
        plain = await gw.request("OPTIONS", "/api", headers={"Origin": APP})
        assert plain.status_code == 204
        assert plain.headers["allow"] == "GET, HEAD, OPTIONS"
        assert cors_fields(plain) == {}
        missing = await ask(gw, "/nothing", "GET")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert cors_fields(missing) == {} and vary(missing) == []


# --- actual requests -------------------------------------------------------------------


async def test_an_allowed_origin_is_echoed_with_credentials_and_vary(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/a": Reply(json={"a": 1})})
        gw = await start_gateway(
            nursery, config(up.url, [endpoint("/api")], defaults={"cors": CREDENTIALED})
        )
        for origin in (APP, "https://north.shop.example"):
            r = await gw.get("/api", headers={"Origin": origin})
            assert r.json() == {"a": 1}
            assert cors_fields(r) == {
                f"{ACA}origin": origin,
                f"{ACA}credentials": "true",
                "access-control-expose-headers": "X-Request-Id, X-Gateway-Backends",
            }
            assert vary(r) == ["Origin"]
        # another origin is served (the browser keeps the answer from its page), and told
        # nothing; a cache still learns the answer depends on Origin
        other = await gw.get("/api", headers={"Origin": "https://evil.example"})
        assert other.status_code == 200 and other.json() == {"a": 1}
        assert cors_fields(other) == {}
        assert vary(other) == ["Origin"]
        # no Origin: a request not made by a page of another origin
        bare = await gw.get("/api")
        assert cors_fields(bare) == {} and vary(bare) == ["Origin"]


async def test_any_origin_without_credentials_says_star_to_everyone(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/a": Reply(json={"a": 1})})
        star = {"allow_origins": ["*"], "expose_headers": ["X-Request-Id"], "max_age": "2h"}
        gw = await start_gateway(nursery, config(up.url, [endpoint("/api", cors=star)]))
        for headers in ({"Origin": "https://anyone.example"}, {}):
            r = await gw.get("/api", headers=headers)
            assert cors_fields(r) == {
                f"{ACA}origin": "*",
                "access-control-expose-headers": "X-Request-Id",
            }
            assert vary(r) == []  # the same answer for every origin
        pre = await ask(gw, "/api", "GET", "https://anyone.example")
        assert pre.status_code == 204
        assert pre.headers.get_list(f"{ACA}origin") == ["*"]
        assert f"{ACA}credentials" not in pre.headers
        assert pre.headers["access-control-max-age"] == "7200"


async def test_every_answer_of_the_endpoint_carries_the_fields(nursery: trio.Nursery) -> None:
    """Errors too: a browser hides the body of an answer without them."""
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(
            nursery, {"/a": Reply(json={}), "/slow": Reply(delay_s=5), "/bad": Reply(status=500)}
        )
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [
                    endpoint("/ok"),
                    {
                        "path": "/slow",
                        "backends": [
                            backend_config("s", "u", "/slow", required=True, timeout="100ms")
                        ],
                    },
                    {"path": "/bad", "backends": [backend_config("b", "u", "/bad", required=True)]},
                    {
                        "path": "/q",
                        "backends": [backend_config("q", "u", "/a?x={query.x}")],
                    },
                    {
                        "path": "/down",
                        "passthrough": True,
                        "backends": [backend_config("d", "down", "/x")],
                    },
                ],
                defaults={"cors": CREDENTIALED},
            )
            | {"upstreams": {"u": {"url": up.url}, "down": {"url": "http://127.0.0.1:9"}}},
        )
        for path, status in (("/slow", 504), ("/bad", 502), ("/q", 400), ("/down", 502)):
            r = await gw.get(path, headers={"Origin": APP})
            assert r.status_code == status, path
            assert r.headers[f"{ACA}origin"] == APP, path
            assert r.headers[f"{ACA}credentials"] == "true", path
            assert vary(r) == ["Origin"], path
            assert "error" in r.json()


async def test_passthrough_answers_get_the_gateways_fields_instead_of_the_upstreams(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        upstream_fields = [
            ("Access-Control-Allow-Origin", "*"),
            ("Access-Control-Allow-Credentials", "false"),
            ("Access-Control-Allow-Methods", "GET, PUT, DELETE"),
            ("Access-Control-Expose-Headers", "X-Secret"),
            ("Access-Control-Max-Age", "86400"),
            ("Vary", "Accept-Language"),
        ]
        up = await start_upstream(nursery, {"/raw": Reply(json={"r": 1}, headers=upstream_fields)})
        raw = {"path": "/raw", "passthrough": True, "backends": [backend_config("r", "u", "/raw")]}
        plain = raw | {"path": "/plain", "cors": False}
        gw = await start_gateway(
            nursery, config(up.url, [raw, plain], defaults={"cors": CREDENTIALED})
        )
        r = await gw.get("/raw", headers={"Origin": APP})
        assert r.json() == {"r": 1}
        assert cors_fields(r) == {
            f"{ACA}origin": APP,
            f"{ACA}credentials": "true",
            "access-control-expose-headers": "X-Request-Id, X-Gateway-Backends",
        }
        assert vary(r) == ["Accept-Language", "Origin"]
        # other origins get none, not the upstream's *
        assert cors_fields(await gw.get("/raw", headers={"Origin": "https://evil.example"})) == {}
        # an endpoint without CORS passes the upstream's fields on as they came
        untouched = await gw.get("/plain", headers={"Origin": APP})
        assert untouched.headers[f"{ACA}origin"] == "*"
        assert "vary" in untouched.headers and "Origin" not in untouched.headers["vary"]


async def test_an_endpoint_mapping_replaces_the_defaults_whole(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/a": Reply(json={})})
        own = {"allow_origins": ["https://other.example"]}
        gw = await start_gateway(
            nursery,
            config(up.url, [endpoint("/own", cors=own)], defaults={"cors": CREDENTIALED}),
        )
        r = await gw.get("/own", headers={"Origin": "https://other.example"})
        assert cors_fields(r) == {f"{ACA}origin": "https://other.example"}  # no credentials
        assert cors_fields(await gw.get("/own", headers={"Origin": APP})) == {}
        refused = await ask(gw, "/own", "GET", "https://other.example", "authorization")
        assert refused.status_code == 403  # no allow_headers of the defaults'


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cors", "at", "says"),
    [
        (
            {"allow_origins": ["*"], "allow_credentials": True},
            "allow_origins[0]",
            "* cannot go with allow_credentials: true",
        ),
        ({"allow_origins": ["*", APP]}, "allow_origins[0]", "it stands alone"),
        (
            {"allow_origins": ["https://app.example/"]},
            "allow_origins[0]",
            "no trailing slash: write https://app.example",
        ),
        (
            {"allow_origins": ["https://app.example/v1"]},
            "allow_origins[0]",
            "no path: write https://app.example",
        ),
        (
            {"allow_origins": ["https://app.example?a=1"]},
            "allow_origins[0]",
            "no query: write https://app.example",
        ),
        (
            {"allow_origins": ["https://u:p@app.example"]},
            "allow_origins[0]",
            "no user information: write https://app.example",
        ),
        ({"allow_origins": ["null"]}, "allow_origins[0]", "sandboxed documents, file: pages"),
        ({"allow_origins": ["regex:(["]}, "allow_origins[0]", "not a valid regular expression"),
        (
            {"allow_origins": ["regex:https://.*"], "allow_credentials": True},
            "allow_origins[0]",
            "matches https://example.invalid, which no one listed",
        ),
        ({"allow_origins": [APP, "HTTPS://App.Example"]}, "allow_origins[1]", "listed twice"),
        ({"allow_origins": [APP], "allow_headers": ["X Y"]}, "allow_headers[0]", "not a valid"),
        (
            {"allow_origins": [APP], "expose_headers": ["X-A", "x-a"]},
            "expose_headers[1]",
            "names are case-insensitive",
        ),
        (
            {"allow_origins": [APP], "expose_headers": ["*"], "allow_credentials": True},
            "expose_headers[0]",
            'browsers read "*" as a header named *',
        ),
        ({"allow_origins": [APP], "max_age": "200ms"}, "max_age", "at least 1s"),
        ({"allow_origins": [APP], "allow_methods": ["FETCH"]}, "allow_methods[0]", "method must"),
        ({"allow_origins": []}, "allow_origins", "at least 1 item"),
        ({"allow_origins": ["ftp://files.example"]}, "allow_origins[0]", "http:// or https://"),
    ],
)
@pytest.mark.parametrize("section", ["defaults", "endpoint"])
def test_config_problems_are_refused_with_their_path_and_check_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cors: dict[str, Any],
    at: str,
    says: str,
    section: str,
) -> None:
    doc = config("http://127.0.0.1:9", [endpoint("/a"), endpoint("/b")])
    if section == "defaults":
        doc["defaults"] = {"cors": cors}
        where = "defaults.cors"
    else:
        doc["endpoints"][1]["cors"] = cors
        where = "endpoints[1].cors"
    file = tmp_path / "gw.yaml"
    file.write_text(json.dumps(doc))
    assert main(["check", str(file)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines  # a problem of defaults is reported once
    assert lines[0].startswith(f"{file}: {where}.{at}: "), lines
    assert says in lines[0]


@pytest.mark.parametrize(
    ("section", "where", "says"),
    [
        ("defaults", "defaults.cors", "cors takes settings, like {allow_origins: ["),
        ("endpoint", "endpoints[0].cors", "cors takes settings, like {allow_origins: ["),
    ],
)
def test_cors_true_says_cors_takes_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, where: str, says: str
) -> None:
    doc = config("http://127.0.0.1:9", [endpoint("/a")])
    if section == "defaults":
        doc["defaults"] = {"cors": True}
    else:
        doc["endpoints"][0]["cors"] = True
    file = tmp_path / "gw.yaml"
    file.write_text(json.dumps(doc))
    assert main(["check", str(file)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{file}: {where}: {says}"), lines
    assert lines[0].endswith("or false (no CORS on this endpoint)") == (section == "endpoint")


def test_cors_fields_cannot_be_set_as_response_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = config(
        "http://127.0.0.1:9",
        [endpoint("/a", response_headers={"Access-Control-Allow-Origin": "*"})],
    )
    file = tmp_path / "gw.yaml"
    file.write_text(json.dumps(doc))
    assert main(["check", str(file)]) == 2
    assert capsys.readouterr().err == (
        f"{file}: endpoints[0].response_headers.Access-Control-Allow-Origin: "
        "set by the gateway from cors: settings\n"
    )


def test_allow_methods_without_the_endpoints_method_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = config(
        "http://127.0.0.1:9",
        [endpoint("/a", method="PUT")],
        defaults={"cors": {"allow_origins": [APP], "allow_methods": ["GET", "POST"]}},
    )
    file = tmp_path / "gw.yaml"
    file.write_text(json.dumps(doc))
    assert main(["check", str(file)]) == 0
    assert capsys.readouterr().err == (
        f"{file}: endpoints[0]: warning: defaults.cors.allow_methods leaves out the "
        "endpoint's method PUT: its preflights are refused\n"
    )


def test_the_issues_example_loads_as_written(tmp_path: Path) -> None:
    from gateway import load_config

    text = (
        "version: 1\n"
        "upstreams: {u: {url: 'http://127.0.0.1:9'}}\n"
        "defaults:\n"
        "  cors:\n"
        '    allow_origins: ["https://app.example", "regex:^https://[a-z0-9-]+\\\\.example$"]\n'
        "    allow_methods: [GET, POST]\n"
        "    allow_headers: [Authorization, Content-Type]\n"
        "    expose_headers: [X-Request-Id, X-Gateway-Complete, X-Gateway-Backends]\n"
        "    allow_credentials: true\n"
        "    max_age: 10m\n"
        "endpoints:\n"
        "  - {path: /a, backends: [{name: a, upstream: u, path: /a}]}\n"
    )
    policy = load_config("gw.yaml", {}, text=text).endpoints[0].cors
    assert policy is not None
    assert policy.allows("https://app.example") and policy.allows("https://eu.example")
    assert not policy.allows("https://eu.example.org")
    assert policy.max_age_s == 600 and policy.methods == ("GET", "POST")
