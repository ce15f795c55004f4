"""Static backends: no upstream and no call; their value is shaped, merged and referenced
like any result."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from conftest import recorder, start_gateway, start_upstream
from upstream import Reply

from gateway import ConfigError, load_config
from gateway._cli import main

FLAGS = {"features": {"checkout_v2": True, "beta": False}, "region": "eu", "limits": [1, 2]}


async def test_a_static_backend_is_merged_referenced_and_calls_nothing(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(lambda req: Reply(json={"items": [req.path]}, delay_s=0.05))
        up = await start_upstream(nursery, handler)
        config = {
            "version": 1,
            "upstreams": {"u": {"url": up.url}},
            "endpoints": [
                {
                    "path": "/api/{id}",
                    "debug": True,
                    "backends": [
                        {
                            "name": "orders",
                            "upstream": "u",
                            "path": "/orders/{id}",
                            "group": "orders",
                        },
                        {
                            "name": "flags",
                            "static": FLAGS,
                            "select": "features",
                            "deny": ["beta"],
                            "rename": {"checkout_v2": "checkout"},
                            "group": "flags",
                        },
                        {"name": "where", "static": FLAGS},  # an object merges at the top level
                        {
                            "name": "regional",
                            "upstream": "u",
                            "path": "/region/{where.region}",
                            "group": "regional",
                        },
                    ],
                }
            ],
        }
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/7")
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-backends"] == "orders=ok, flags=ok, where=ok, regional=ok"
    assert r.headers["x-gateway-complete"] == "true"
    body = r.json()
    debug = body.pop("_gateway")["backends"]
    assert body == {
        "orders": {"items": ["/orders/7"]},
        "flags": {"checkout": True},
        **FLAGS,
        "regional": {"items": ["/region/eu"]},
    }
    assert sorted(req.path for req in seen) == ["/orders/7", "/region/eu"]
    assert debug["flags"]["duration_ms"] == 0 and debug["where"]["duration_ms"] == 0
    assert debug["regional"]["depends_on"] == ["where"]
    assert debug["flags"]["started_ms"] < 50  # answered at once, not after the upstream


async def test_an_endpoint_of_static_backends_needs_no_upstream(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        config = {
            "version": 1,
            "endpoints": [
                {
                    "path": "/api/flags",
                    "backends": [
                        {"name": "flags", "static": FLAGS, "allow": ["region"]},
                        {"name": "n", "static": 3},
                        {"name": "nothing", "static": None},
                        {
                            "name": "beta",
                            "static": True,
                            "when": {"query": "beta"},
                            "group": "beta",
                        },
                    ],
                }
            ],
        }
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/flags")
        assert r.status_code == 200
        assert r.json() == {"region": "eu", "n": 3, "nothing": None}
        assert r.headers["x-gateway-backends"] == "flags=ok, n=ok, nothing=ok, beta=skipped"
        r = await gw.get("/api/flags?beta")
        assert r.json()["beta"] is True


def problems(backend: dict[str, Any], **endpoint: Any) -> list[str]:
    config = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:1"}},
        "endpoints": [{"path": "/api", "backends": [backend], **endpoint}],
    }
    with pytest.raises(ConfigError) as info:
        load_config("s.yaml", {}, text=json.dumps(config))
    return [str(p) for p in info.value.problems]


def test_a_static_backend_has_no_call_settings() -> None:
    backend = {
        "name": "s",
        "static": {"a": 1},
        "upstream": "u",
        "path": "/x",
        "method": "POST",
        "timeout": "1s",
        "retries": {"attempts": 1},
        "headers": {"X-A": "b"},
        "cache": {"ttl": "1s"},
    }
    assert problems(backend) == [
        f"s.yaml: endpoints[0].backends[0].{key}: a static backend makes no call: {key} does not apply"
        for key in ("upstream", "path", "method", "timeout", "headers", "retries", "cache")
    ]


def test_a_select_the_static_value_lacks_is_found_at_load() -> None:
    assert problems({"name": "s", "static": {"a": 1}, "select": "b"}) == [
        "s.yaml: endpoints[0].backends[0].select: the static value has no 'b'"
    ]


def test_a_passthrough_endpoint_has_no_static_backend() -> None:
    assert problems({"name": "s", "static": 1}, passthrough=True) == [
        "s.yaml: endpoints[0].backends[0].static: a passthrough endpoint streams an upstream's answer"
    ]


def test_a_backend_without_static_needs_an_upstream_and_a_path() -> None:
    assert problems({"name": "s"}) == [
        "s.yaml: endpoints[0].backends[0].upstream: required key is missing",
        "s.yaml: endpoints[0].backends[0].path: required key is missing",
    ]


def test_gateway_check_shows_a_static_backend(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "s.yaml"
    file.write_text(
        json.dumps(
            {
                "version": 1,
                "endpoints": [
                    {"path": "/f", "backends": [{"name": "flags", "static": 1, "group": "g"}]}
                ],
            }
        )
    )
    assert main(["check", str(file)]) == 0
    out = capsys.readouterr().out
    assert "    flags            static  [group g]" in out


def test_a_reference_to_a_static_value_that_would_always_fail_is_found_at_load() -> None:
    config = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:1"}},
        "endpoints": [
            {
                "path": "/api",
                "method": "POST",
                "backends": [
                    {"name": "flags", "static": {"n": "x", "path": "a/b", "ids": [1, {}]}},
                    {"name": "whole", "static": [1]},
                    {"name": "a", "upstream": "u", "path": "/a/{flags.nope}"},
                    {"name": "b", "upstream": "u", "path": "/b/{flags.path}"},
                    {
                        "name": "c",
                        "upstream": "u",
                        "path": "/c",
                        "method": "POST",
                        "body": {
                            "template": {
                                "n": "{flags.n:int}",
                                "ids": "{flags.ids[*]:str}",
                                "w": "{whole:bool}",
                                "fine": "{flags.n}",
                            }
                        },
                    },
                ],
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        load_config("s.yaml", {}, text=json.dumps(config))
    assert [str(p) for p in info.value.problems] == [
        "s.yaml: endpoints[0].backends[2].path: {flags.nope}: static backend 'flags' has "
        "nothing at $.nope",
        "s.yaml: endpoints[0].backends[3].path: {flags.path}: the value of static backend "
        "'flags' at $.path: '/' is not allowed",
        "s.yaml: endpoints[0].backends[4].body.template.n: {flags.n:int}: the value of static "
        "backend 'flags' at $.n: cannot convert a string that is not an integer to int",
        "s.yaml: endpoints[0].backends[4].body.template.ids: {flags.ids[*]:str}: the value of "
        "static backend 'flags' at $.ids[1]: cannot convert an object to str",
        "s.yaml: endpoints[0].backends[4].body.template.w: {whole:bool}: the value of static "
        "backend 'whole': cannot convert an array to bool",
    ]
