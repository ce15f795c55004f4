"""Values the client request supplies: checked when the request arrives, kept octet for octet.

A missing or unsafe value that a backend needs is the client's mistake: 400 naming it,
before any upstream is called (RFC 9110 section 15.5.1). Percent-encoded octets reach the
upstream exactly as the client sent them, in the path and in the query alike (RFC 3986
section 2.1).
"""

from __future__ import annotations

from typing import Any

import trio
from conftest import (
    backend_config,
    raw_request,
    recorder,
    simple_config,
    start_gateway,
    start_upstream,
)
from upstream import Reply

# --- 400 before any upstream call -------------------------------------------------------


async def test_a_missing_or_unsafe_query_value_a_template_needs_is_a_400_naming_it(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [
                backend_config("search", "u", "/search?q={query.q}"),
                backend_config("other", "u", "/other", required=False),
            ],
        )
        gw = await start_gateway(nursery, config)
        for query in ["", "?x=1", "?q=", "?q=..", "?q=.", "?q=a/b", "?q=a%2Fb", "?q=%00", "?q=%zz"]:
            r = await raw_request(gw.url, "/api/1" + query)
            assert r.status == 400, query
            error = r.json()["error"]
            assert error["code"] == "invalid_query_parameter", query
            assert (error["parameter"], error["in"]) == ("q", "query"), query
            assert "'q'" in error["message"]
        assert seen == []  # no upstream was called, not even the other backend
        r = await raw_request(gw.url, "/api/1?q=fine")
        assert r.status == 200


async def test_an_unsafe_or_missing_header_a_template_needs_is_a_400_naming_it(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up}, [backend_config("t", "u", "/tenants/{header.X-Tenant}/orders")]
        )
        gw = await start_gateway(nursery, config)
        for headers in [{}, {"X-Tenant": ".."}, {"X-Tenant": "s3cr3t/b"}]:
            r = await gw.get("/api/1", headers=headers)
            assert r.status_code == 400, headers
            assert "s3cr3t" not in r.text  # the field is named, its value never echoed
            error = r.json()["error"]
            assert error["code"] == "invalid_header"
            assert (error["parameter"], error["in"]) == ("x-tenant", "header")
        assert seen == []
        r = await gw.get("/api/1", headers={"X-Tenant": "acme"})
        assert r.status_code == 200
        assert seen[0].target == "/tenants/acme/orders"


async def test_a_post_without_a_body_to_a_body_forwarding_backend_is_a_400(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config("create", "u", "/orders", method="POST", body="forward")],
            method="POST",
        )
        gw = await start_gateway(nursery, config)
        r = await gw.request("POST", "/api/1")
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_request_body"
        assert r.json()["error"]["in"] == "body"
        assert seen == []
        r = await gw.request("POST", "/api/1", content=b'{"n": 1}')
        assert r.status_code == 200
        assert seen[0].body == b'{"n": 1}'


async def test_a_backend_skipped_by_its_condition_needs_no_value(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [
                backend_config("base", "u", "/base"),
                backend_config(
                    "search", "u", "/search?q={query.q}", when={"query": "q"}, required=False
                ),
            ],
        )
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")  # no q: search is skipped, nothing is missing
        assert r.status_code == 200
        assert [req.path for req in seen] == ["/base"]
        r = await gw.get("/api/1?q=..")  # given, the value must be safe
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_query_parameter"


async def test_values_from_upstream_responses_stay_invalid_reference(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/profile": Reply(json={"team": "a/b"}), "/team/x": Reply(json={})}
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("profile", "u", "/profile", group="profile"),
                backend_config("team", "u", "/team/{profile.team}", required=False, group="team"),
            ],
        )
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.status_code == 200
        assert r.headers["x-gateway-backends"] == "profile=ok, team=invalid_reference"


async def test_a_passthrough_template_value_that_is_missing_is_a_400(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config: dict[str, Any] = {
            "version": 1,
            "upstreams": {"u": {"url": up.url}},
            "endpoints": [
                {
                    "path": "/files",
                    "passthrough": True,
                    "backends": [backend_config("f", "u", "/files?name={query.name}")],
                }
            ],
        }
        gw = await start_gateway(nursery, config)
        r = await gw.get("/files")
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_query_parameter"
        assert r.json()["error"]["parameter"] == "name"
        assert seen == []


# --- octets kept exactly ----------------------------------------------------------------


async def test_query_octets_reach_the_upstream_exactly(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config("s", "u", "/s/{id}?t={query.t}")],
            forward_query=["q", "r"],
        )
        gw = await start_gateway(nursery, config)
        # as the client wrote them: %FF stays %FF (never %EF%BF%BD), "+" stays "+"
        r = await raw_request(gw.url, "/api/%FF%C3?q=%FF&t=%FE%20x&skip=%FF&r=a+b&q=%e9")
        assert r.status == 200, r.body
        assert [req.target for req in seen] == ["/s/%FF%C3?t=%FE%20x&q=%FF&r=a+b&q=%e9"]


async def test_a_header_value_reaches_the_upstream_octet_for_octet(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        received: list[bytes] = []

        async def handler(req: Any) -> Reply:
            received.append(req.headers["x-user"].encode("latin-1"))
            return Reply(json={})

        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config("s", "u", "/s", headers={"X-User": "u={header.X-Name}"})],
        )
        gw = await start_gateway(nursery, config)
        name = "José".encode()
        r = await gw.get("/api/1", headers=[(b"X-Name", name)])
        assert r.status_code == 200
        assert received == [b"u=" + name]  # never re-encoded (b"Jos\xc3\x83\xc2\xa9")


async def test_a_malformed_forwarded_query_value_is_a_400(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("s", "u", "/s")], forward_query=["q"])
        gw = await start_gateway(nursery, config)
        r = await raw_request(gw.url, "/api/1?q=100%&other=%zz")
        assert r.status == 400
        assert r.json()["error"]["code"] == "invalid_query_parameter"
        assert r.json()["error"]["parameter"] == "q"
        r = await raw_request(gw.url, "/api/1?other=%zz")  # not read: ignored, as before
        assert r.status == 200
        assert seen[0].target == "/s"


async def test_hash_and_question_mark_in_a_path_parameter_are_forwarded_encoded(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config("user", "u", "/users/{id}/photo?size=1")],
            path="/api/users/{id}",
        )
        gw = await start_gateway(nursery, config)
        r = await raw_request(gw.url, "/api/users/jane_doe%23EXT%23%40corp.example")
        assert r.status == 200, r.body
        r = await raw_request(gw.url, "/api/users/what%3Fx=1")
        assert r.status == 200, r.body
        assert [req.target for req in seen] == [
            "/users/jane_doe%23EXT%23%40corp.example/photo?size=1",
            "/users/what%3Fx%3D1/photo?size=1",
        ]
