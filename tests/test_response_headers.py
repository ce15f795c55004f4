"""`response_headers` and `remove_headers`, from `defaults` and per endpoint, on
aggregated and passthrough responses and on an endpoint's errors."""

from __future__ import annotations

import json

import pytest
import trio
from conftest import backend_config, simple_config, start_gateway, start_upstream
from upstream import Reply

from gateway import load_config
from gateway._errors import ConfigError


async def test_configured_fields_are_set_and_removed_on_every_answer_of_an_endpoint(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/x/1": Reply(json={"a": 1}),
                "/raw": Reply(
                    json={"b": 2},
                    headers=[("Server", "upstream/1.0"), ("X-Powered-By", "php"), ("X-Keep", "1")],
                ),
            },
        )
        config = simple_config({"u": up}, [backend_config("a", "u", "/x/{id}")])
        config["defaults"] = {
            "response_headers": {"Strict-Transport-Security": "max-age=63072000"},
            "remove_headers": ["Server"],
        }
        config["endpoints"][0]["response_headers"] = {
            "Content-Security-Policy": "default-src 'none'"
        }
        config["endpoints"].append(
            {
                "path": "/raw",
                "passthrough": True,
                "response_headers": {"strict-transport-security": "max-age=1", "X-Keep": "2"},
                "remove_headers": ["x-powered-by"],
                "backends": [backend_config("r", "u", "/raw")],
            }
        )
        gw = await start_gateway(nursery, config)

        r = await gw.get("/api/1")
        assert r.json() == {"a": 1}
        assert r.headers["strict-transport-security"] == "max-age=63072000"
        assert r.headers["content-security-policy"] == "default-src 'none'"
        failed = await gw.get("/api/2")  # an error of the endpoint: its backend failed
        assert failed.status_code == 502
        assert failed.headers["strict-transport-security"] == "max-age=63072000"

        raw = await gw.get("/raw")
        assert raw.json() == {"b": 2}
        assert raw.headers.get_list("strict-transport-security") == ["max-age=1"]  # endpoint wins
        assert raw.headers.get_list("x-keep") == ["2"]  # replaces the upstream's
        assert "server" not in raw.headers and "x-powered-by" not in raw.headers
        assert "content-security-policy" not in raw.headers  # another endpoint's
        assert "x-request-id" in raw.headers

        other = await gw.get("/nothing")  # no endpoint: none of its fields
        assert other.status_code == 404 and "strict-transport-security" not in other.headers


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"response_headers": {"Content-Length": "1"}}, "set by the gateway for each response"),
        ({"response_headers": {"Connection": "close"}}, "set by the gateway for each response"),
        (
            {"response_headers": {"Content-Encoding": "gzip"}},
            "set by the gateway for each response",
        ),
        (
            {"response_headers": {"Content-Type": "text/html"}},
            "set by the gateway for each response",
        ),
        (
            {"response_headers": {"Date": "Mon, 01 Jan 2024"}},
            "set by the gateway for each response",
        ),
        (
            {"response_headers": {"X-Gateway-Complete": "true"}},
            "set by the gateway for each response",
        ),
        ({"response_headers": {"Bad Name": "x"}}, "not a valid field name"),
        ({"response_headers": {"X-A\n": "x"}}, "not a valid field name"),
        ({"response_headers": {"X-A": "a\r\nX-B: b"}}, "not a valid field value"),
        ({"response_headers": {"X-A": "é"}}, "not a valid field value"),
        ({"response_headers": {"x-a": "a", "X-A": "b"}}, "names are case-insensitive)"),
        ({"remove_headers": ["Content-Type"]}, "the response needs this field"),
        ({"remove_headers": ["Content-Encoding"]}, "the response needs this field"),
        ({"remove_headers": ["Transfer-Encoding"]}, "the response needs this field"),
        ({"remove_headers": ["X-Gateway-Backends"]}, "the response needs this field"),
        ({"remove_headers": ["Retry-After"]}, "the response needs this field"),
        ({"remove_headers": ["WWW-Authenticate"]}, "the response needs this field"),
        (
            {
                "response_headers": {"X-Frame-Options": "DENY"},
                "remove_headers": ["x-frame-options"],
            },
            "also in response_headers here: set it or remove it",
        ),
    ],
)
def test_fields_the_gateway_owns_or_that_are_malformed_are_config_problems_reported_once(
    section: dict[str, object], problem: str
) -> None:
    backend = [{"name": "a", "upstream": "u", "path": "/a"}]
    doc = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        # two endpoints: a problem of defaults is still one problem
        "endpoints": [{"path": "/a", "backends": backend}, {"path": "/b", "backends": backend}],
        "defaults": section,
    }
    with pytest.raises(ConfigError) as caught:
        load_config("gw.yaml", {}, text=json.dumps(doc))
    messages = [str(p) for p in caught.value.problems]
    assert len(messages) == 1 and messages[0].endswith(problem), messages
    assert messages[0].startswith("gw.yaml: defaults.")


def test_a_tab_inside_a_value_is_allowed() -> None:
    """RFC 9110 section 5.5: a field value may hold spaces and horizontal tabs."""
    doc = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [{"path": "/a", "backends": [{"name": "a", "upstream": "u", "path": "/a"}]}],
        "defaults": {"response_headers": {"X-Tab": "a\tb"}},
    }
    plan = load_config("gw.yaml", {}, text=json.dumps(doc))
    assert (b"X-Tab", b"a\tb") in plan.endpoints[0].response_fields


async def test_a_plain_options_has_the_fields_its_paths_endpoints_share(
    nursery: trio.Nursery,
) -> None:
    """OPTIONS without a preflight: 204 with Allow and the ``response_headers`` every
    endpoint at the path has (the defaults' here); none where they differ."""
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["defaults"] = {"response_headers": {"Strict-Transport-Security": "max-age=60"}}
        config["endpoints"].append(
            {"path": "/api/{id}", "method": "POST", "backends": [backend_config("b", "u", "/x")]}
        )
        config["endpoints"].append({"path": "/two", "backends": [backend_config("c", "u", "/x")]})
        config["endpoints"].append(
            {
                "path": "/two",
                "method": "POST",
                "response_headers": {"X-Frame-Options": "DENY"},
                "backends": [backend_config("d", "u", "/x")],
            }
        )
        gw = await start_gateway(nursery, config)
        same = await gw.request("OPTIONS", "/api/1")
        assert same.status_code == 204
        assert same.headers["allow"] == "GET, HEAD, POST, OPTIONS"
        assert same.headers["strict-transport-security"] == "max-age=60"
        differ = await gw.request("OPTIONS", "/two")
        assert differ.status_code == 204
        assert "strict-transport-security" not in differ.headers
        assert "x-frame-options" not in differ.headers


def test_an_endpoint_removing_a_field_the_defaults_set_is_a_problem_at_its_path() -> None:
    backend = [{"name": "a", "upstream": "u", "path": "/a"}]
    doc = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "defaults": {"response_headers": {"Strict-Transport-Security": "max-age=60"}},
        "endpoints": [
            {"path": "/a", "backends": backend, "remove_headers": ["Server"]},
            {"path": "/b", "backends": backend, "remove_headers": ["strict-transport-security"]},
        ],
    }
    with pytest.raises(ConfigError) as caught:
        load_config("gw.yaml", {}, text=json.dumps(doc))
    assert [str(p) for p in caught.value.problems] == [
        "gw.yaml: endpoints[1].remove_headers[0]: defaults.response_headers sets it on every"
        " endpoint (to leave it out here, set it per endpoint instead)"
    ]
