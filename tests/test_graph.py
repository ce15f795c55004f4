"""Dependent and conditional backends: the endpoint's backends run as a call graph."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from conftest import backend_config, recorder, start_gateway, start_upstream
from upstream import RecordedRequest, Reply

from gateway import ConfigError, load_config


def graph_config(url: str, backends: list[dict[str, Any]], **endpoint: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {"u": {"url": url}},
        "endpoints": [{"path": "/api/{id}", "backends": backends, **endpoint}],
    }


def b(name: str, path: str, **extra: Any) -> dict[str, Any]:
    return backend_config(name, "u", path, **extra)


async def test_a_diamond_runs_independent_branches_concurrently(nursery: trio.Nursery) -> None:
    """A; B and C on A; D on B and C: about A + max(B, C) + D, not the sum."""
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/a/7": Reply(json={"user": {"id": "u7", "segment": "gold"}}, delay_s=0.15),
                "/b/u7": Reply(json={"x": "bx"}, delay_s=0.15),
                "/c/gold": Reply(json={"y": 42}, delay_s=0.25),
                "/d/bx/42": Reply(json={"done": True}, delay_s=0.15),
            },
        )
        gw = await start_gateway(
            nursery,
            graph_config(
                up.url,
                [
                    b("A", "/a/{id}", select="user", group="a"),
                    b("B", "/b/{A.id}", group="b"),
                    b("C", "/c/{A.segment}", group="c"),
                    b("D", "/d/{B.x}/{C.y}", group="d"),
                ],
                debug=True,
            ),
        )
        start = trio.current_time()
        r = await gw.get("/api/7")
        elapsed = trio.current_time() - start
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-backends"] == "A=ok, B=ok, C=ok, D=ok"
        body = r.json()
        debug = body.pop("_gateway")["backends"]
        assert body == {
            "a": {"id": "u7", "segment": "gold"},
            "b": {"x": "bx"},
            "c": {"y": 42},
            "d": {"done": True},
        }
        assert 0.53 <= elapsed < 0.68, elapsed  # sum would be 0.70
        assert debug["D"]["depends_on"] == ["B", "C"]
        assert abs(debug["B"]["started_ms"] - debug["C"]["started_ms"]) < 30
        assert debug["B"]["started_ms"] >= 150
        assert debug["D"]["started_ms"] >= debug["C"]["started_ms"] + 250
        assert debug["A"]["outcome"] == "ok"


async def test_for_each_keeps_element_order_under_reversed_finishing(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):

        async def handler(req: RecordedRequest) -> Reply:
            if req.path == "/orders":
                items = [{"product_id": p} for p in ("p1", "p2", "p3", "p4")]
                return Reply(json={"items": items})
            pid = req.path.rsplit("/", 1)[1]
            # p1 answers last, p4 first
            return Reply(
                json={"id": pid, "n": 1}, delay_s={"p1": 0.2, "p2": 0.15, "p3": 0.1}.get(pid, 0)
            )

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            graph_config(
                up.url,
                [
                    b("orders", "/orders", group="orders"),
                    b(
                        "products",
                        "/products/{orders.items[*].product_id}",
                        for_each=True,
                        allow=["id"],
                        group="products",
                    ),
                ],
            ),
        )
        start = trio.current_time()
        r = await gw.get("/api/1")
        elapsed = trio.current_time() - start
        assert r.status_code == 200
        assert r.json()["products"] == [{"id": "p1"}, {"id": "p2"}, {"id": "p3"}, {"id": "p4"}]
        assert elapsed < 0.4  # concurrent: the slowest element, not the sum (0.45)


async def test_for_each_over_max_calls_is_an_invalid_reference(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/list": Reply(json=[{"id": i} for i in range(5)]), "/x/0": Reply(json={})}
        )
        gw = await start_gateway(
            nursery,
            graph_config(
                up.url,
                [
                    b("list", "/list", group="list"),
                    b("each", "/x/{list[*].id}", for_each=True, max_calls=3, default=[]),
                ],
            ),
        )
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == "list=ok, each=invalid_reference"
        assert r.json()["each"] == []
        assert up.calls("/x/0") == 0


async def test_a_failed_dependency_skips_its_dependents(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {"/a": Reply(status=500), "/b/x": Reply(json={}), "/other": Reply(json={"o": 1})},
        )
        gw = await start_gateway(
            nursery,
            graph_config(
                up.url,
                [
                    b("a", "/a"),
                    b("b", "/b/{a.k}", group="b", default={"none": True}),
                    b("c", "/b/{b.k}", group="c"),
                    b("other", "/other"),
                ],
            ),
        )
        r = await gw.get("/api/1")
        assert r.status_code == 200
        assert r.headers["x-gateway-complete"] == "false"
        assert r.headers["x-gateway-backends"] == (
            "a=http_500, b=dependency_failed, c=dependency_failed, other=ok"
        )
        assert r.json() == {"b": {"none": True}, "o": 1}
        assert up.calls("/b/x") == 0


async def test_a_required_dependent_of_a_failed_backend_fails_the_request(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/a": Reply(fault="reset"), "/slow": Reply(fault="hang")}
        )
        gw = await start_gateway(
            nursery,
            graph_config(
                up.url,
                [b("a", "/a"), b("b", "/b/{a.k}", required=True), b("slow", "/slow")],
                deadline="5s",
            ),
        )
        start = trio.current_time()
        r = await gw.get("/api/1")
        assert trio.current_time() - start < 1
        assert r.status_code == 502
        assert r.json()["backends"] == {
            "a": "unreachable",
            "b": "dependency_failed",
            "slow": "cancelled",
        }


async def test_conditions_skip_without_marking_the_response_incomplete(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/base": Reply(json={"base": 1}),
                "/beta": Reply(json={"beta": 1}),
                "/x/1": Reply(json={"dep": 1}),
            },
        )
        gw = await start_gateway(
            nursery,
            graph_config(
                up.url,
                [
                    b("base", "/base"),
                    b("beta", "/beta", when={"query": "beta", "equals": "1"}, group="beta"),
                    b("dep", "/x/{beta.beta}", group="dep"),
                    b(
                        "tier",
                        "/base",
                        when=[{"header": "X-Tier", "in": ["gold", "silver"]}],
                        group="t",
                    ),
                ],
            ),
        )
        r = await gw.get("/api/1")
        assert r.status_code == 200
        assert r.headers["x-gateway-complete"] == "true"
        assert r.headers["x-gateway-backends"] == "base=ok, beta=skipped, dep=skipped, tier=skipped"
        assert r.json() == {"base": 1}
        assert up.calls("/beta") == 0

        r = await gw.get("/api/1?beta=1", headers={"X-Tier": "gold"})
        assert r.headers["x-gateway-backends"] == "base=ok, beta=ok, dep=ok, tier=ok"
        assert r.json() == {"base": 1, "beta": {"beta": 1}, "dep": {"dep": 1}, "t": {"base": 1}}

        r = await gw.get("/api/1?beta=2", headers={"X-Tier": "bronze"})
        assert r.headers["x-gateway-backends"] == "base=ok, beta=skipped, dep=skipped, tier=skipped"


async def test_query_and_header_references_are_encoded_and_checked(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(lambda req: Reply(json={"v": "a/b", "obj": {"k": 1}}))

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            graph_config(
                up.url,
                [
                    b(
                        "q",
                        "/search?q={query.q}&t={header.X-Tenant}",
                        headers={"X-Tenant-Id": "t-{header.X-Tenant}", "X-Lit": "{{x}}"},
                        group="q",
                    ),
                    b("slash", "/x/{q.v}", group="s"),
                    b("object", "/x/{q.obj}", group="o"),
                ],
            ),
        )
        r = await gw.get("/api/1?q=a b&c", headers={"X-Tenant": "acme"})
        assert r.headers["x-gateway-backends"] == (
            "q=ok, slash=invalid_reference, object=invalid_reference"
        )
        first = next(req for req in seen if req.path == "/search")
        assert first.target == "/search?q=a%20b&t=acme"
        assert first.headers["x-tenant-id"] == "t-acme"
        assert first.headers["x-lit"] == "{x}"
        assert [req.path for req in seen] == ["/search"]  # nothing unsafe was sent

        seen.clear()
        r = await gw.get("/api/1", headers={"X-Tenant": "acme"})  # no q: the client's mistake
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_query_parameter"
        assert r.json()["error"]["parameter"] == "q"
        r = await gw.get("/api/1?q=1")  # no X-Tenant
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_header"
        assert r.json()["error"]["parameter"] == "x-tenant"
        assert seen == []  # refused before any upstream was called


async def test_request_bodies_are_forwarded_intact_or_in_part(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen: dict[str, RecordedRequest] = {}

        async def handler(req: RecordedRequest) -> Reply:
            seen[req.path] = req
            return Reply(json={"ok": req.path})

        up = await start_upstream(nursery, handler)
        config = graph_config(
            up.url,
            [
                b("whole", "/whole", method="POST", body="forward", group="w"),
                b("part", "/part", method="PUT", body={"select": "order.items"}, group="p"),
                b("none", "/none", group="n"),
            ],
            method="POST",
        )
        config["server"] = {"max_request_body": "1KiB"}
        gw = await start_gateway(nursery, config)
        raw = b'{"order": {"items": [1, 2, {"x": "\\u00e9"}]},   "note": "spaces kept"}'
        r = await gw.request("POST", "/api/1", content=raw)
        assert r.status_code == 200, r.text
        assert seen["/whole"].body == raw
        assert seen["/whole"].method == "POST"
        assert seen["/whole"].headers["content-type"] == "application/json"
        assert json.loads(seen["/part"].body) == [1, 2, {"x": "é"}]
        assert seen["/part"].method == "PUT"
        assert seen["/none"].body == b""

        r = await gw.request("POST", "/api/1", content=b"{not json")
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_request_body"
        assert r.json()["error"]["in"] == "body"
        r = await gw.request("POST", "/api/1", content=b'{"a": "' + b"x" * 2000 + b'"}')
        assert r.status_code == 413
        seen.clear()
        r = await gw.request("POST", "/api/1", content=b'{"order": {}}')
        assert r.status_code == 400  # the body lacks what a backend sends: the client's mistake
        assert r.json()["error"]["code"] == "invalid_request_body"
        assert r.json()["error"]["parameter"] == "order.items"
        r = await gw.request("POST", "/api/1")  # no body at all
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_request_body"
        assert seen == {}  # refused before any upstream was called


async def test_returned_headers_resolve_conflicts_by_config_order(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/first": Reply(
                    json={"a": 1}, headers=[("Cache-Control", "max-age=60"), ("ETag", '"e1"')]
                ),
                "/second": Reply(
                    json={"b": 2}, headers=[("Cache-Control", "no-store")], delay_s=0.05
                ),
                "/third": Reply(status=500, headers=[("Cache-Control", "max-age=1")]),
            },
        )
        gw = await start_gateway(
            nursery,
            graph_config(
                up.url,
                [
                    b("first", "/first", return_headers=["Cache-Control", "ETag"]),
                    b("second", "/second", return_headers=["cache-control"]),
                    b("third", "/third", return_headers=["Cache-Control"]),
                ],
            ),
        )
        r = await gw.get("/api/1")
        # incomplete (third failed): no-store, and no backend's validator
        assert r.headers.get_list("cache-control") == ["no-store"]
        assert "etag" not in r.headers


def problems(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("g.yaml", {}, text=json.dumps(config))
    return [str(p) for p in info.value.problems]


def test_a_cycle_is_rejected_with_its_path() -> None:
    config = graph_config(
        "http://127.0.0.1:1",
        [b("a", "/a/{c.x}"), b("b", "/b/{a.x}"), b("c", "/c/{b.x}"), b("d", "/d")],
    )
    assert problems(config) == [
        "g.yaml: endpoints[0].backends[0].path: dependency cycle: a -> c -> b -> a"
    ]


def test_dangling_and_malformed_references_are_rejected() -> None:
    config = graph_config(
        "http://127.0.0.1:1",
        [
            b("a", "/a/{nope.x}"),
            b("b", "/b/{b.x}"),
            b("c", "/c/{user}"),
            b("d", "/d/{a.items[*].id}"),
            b("e", "/e", for_each=True),
            b("query", "/q"),
            b("f", "/f", headers={"X-A": "{a.x"}),
            b("g", "/g", when={"query": "q", "header": "h"}),
            b("h", "/h", body="forward", method="POST"),
        ],
    )
    assert problems(config) == [
        "g.yaml: endpoints[0].backends[0].path: unknown backend in {nope.x} (other backends: "
        "b, c, d, e, query, f, g, h)",
        "g.yaml: endpoints[0].backends[1].path: {b.x} refers to this backend itself",
        "g.yaml: endpoints[0].backends[2].path: unknown path parameter {user} "
        "(the endpoint path has: id)",
        "g.yaml: endpoints[0].backends[3].path: {a.items[*].id} walks an array: set for_each: true",
        "g.yaml: endpoints[0].backends[4].for_each: needs a reference with [*], "
        "like {orders.items[*].id}",
        "g.yaml: endpoints[0].backends[5].name: 'query' is reserved for {query.NAME} references",
        "g.yaml: endpoints[0].backends[6].headers.X-A: unbalanced '{' or '}' "
        "(write {{ or }} for a literal brace)",
        "g.yaml: endpoints[0].backends[7].when: give exactly one of query and header",
        "g.yaml: endpoints[0].backends[8].body: sending a body needs POST, PUT or PATCH on "
        "the endpoint and the backend",
    ]


def test_gateway_check_names_the_cycle(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway._cli import main

    file = tmp_path / "cycle.yaml"
    file.write_text(
        json.dumps(graph_config("http://127.0.0.1:1", [b("x", "/x/{y.id}"), b("y", "/y/{x.id}")]))
    )
    assert main(["check", str(file)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{file}: endpoints[0].backends[0].path: dependency cycle: x -> y -> x\n"
