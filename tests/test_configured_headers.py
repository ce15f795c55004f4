"""Headers the config sets on upstream calls: one line per field, whatever the case of
its name (RFC 9110 section 5.1). The backend's value replaces the upstream's, the config's
replaces a forwarded client field, and any of them the default ``Accept``; names that
differ only by case in one mapping are a config problem."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from conftest import recorder, start_gateway, start_upstream

from gateway import load_config
from gateway._errors import ConfigError


def layered_config(up_url: str, backend_header: str, *, passthrough: bool) -> dict[str, Any]:
    """An upstream and a backend that set the same fields, with the client's forwarded."""
    return {
        "version": 1,
        "upstreams": {
            "u": {"url": up_url, "headers": {"Authorization": "Bearer upstream", "X-Up": "1"}}
        },
        "endpoints": [
            {
                "path": "/p",
                "passthrough": passthrough,
                "forward_headers": ["X-Up", "x-only-client", "Accept"],
                "backends": [
                    {
                        "name": "b",
                        "upstream": "u",
                        "path": "/p",
                        "headers": {backend_header: "Bearer backend", "x-up": "2"},
                    }
                ],
            }
        ],
    }


@pytest.mark.parametrize("passthrough", [False, True], ids=["aggregated", "passthrough"])
@pytest.mark.parametrize("backend_header", ["Authorization", "authorization"])
async def test_the_backend_replaces_the_upstream_and_the_config_replaces_the_client(
    nursery: trio.Nursery, passthrough: bool, backend_header: str
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery, layered_config(up.url, backend_header, passthrough=passthrough)
        )
        r = await gw.get(
            "/p", headers={"X-Up": "client", "X-Only-Client": "c", "Accept": "text/csv"}
        )
        assert r.status_code == 200
        (request,) = seen
        # repeated fields would be joined with ", " by the recording upstream
        assert request.headers["authorization"] == "Bearer backend"
        assert request.headers["x-up"] == "2"
        assert request.headers["x-only-client"] == "c"
        assert request.headers["accept"] == "text/csv"  # forwarded, not next to the default


async def test_an_aggregated_call_asks_for_json_unless_told_otherwise(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = layered_config(up.url, "Authorization", passthrough=False)
        config["endpoints"][0]["forward_headers"] = []
        config["upstreams"]["u"]["headers"]["ACCEPT"] = "application/vnd.x+json"
        gw = await start_gateway(nursery, config)
        assert (await gw.get("/p", headers={"Accept": "text/csv"})).status_code == 200
        config["upstreams"]["u"]["headers"].pop("ACCEPT")
        gw = await start_gateway(nursery, config)
        assert (await gw.get("/p", headers={"Accept": "text/csv"})).status_code == 200
        assert [req.headers["accept"] for req in seen] == [
            "application/vnd.x+json",
            "application/json",
        ]


def header_problems(upstream_headers: str, backend_headers: str) -> list[str]:
    text = (
        "version: 1\n"
        f"upstreams:\n  u: {{url: 'http://127.0.0.1:1', headers: {upstream_headers}}}\n"
        "endpoints:\n  - path: /p\n"
        f"    backends: [{{name: b, upstream: u, path: /p, headers: {backend_headers}}}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config("gw.yaml", {}, text=text)
    return [str(p) for p in info.value.problems]


def test_names_differing_only_by_case_in_one_mapping_are_each_reported() -> None:
    assert header_problems("{X-A: a, x-a: b}", "{Authorization: t, AUTHORIZATION: u}") == [
        "gw.yaml: upstreams.u.headers.x-a: the same header as X-A (header names are "
        "case-insensitive)",
        "gw.yaml: endpoints[0].backends[0].headers.AUTHORIZATION: the same header as "
        "Authorization (header names are case-insensitive)",
    ]


def test_the_same_name_in_the_upstream_and_the_backend_is_no_problem() -> None:
    text = (
        "version: 1\n"
        "upstreams:\n  u: {url: 'http://127.0.0.1:1', headers: {X-A: a}}\n"
        "endpoints:\n  - path: /p\n"
        "    backends: [{name: b, upstream: u, path: /p, headers: {x-a: b}}]\n"
    )
    (endpoint,) = load_config("gw.yaml", {}, text=text).endpoints
    assert endpoint.backends[0].static_headers == ()
    assert endpoint.backends[0].configured_names == frozenset({b"x-a"})
