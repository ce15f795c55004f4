"""Templated JSON bodies and `{body.x}` references, over real upstreams: values arrive with
their JSON types, a client's value that cannot convert is a 400 naming where it is (no
upstream called), an upstream's is `invalid_reference`."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from conftest import recorder, start_gateway, start_upstream
from upstream import RecordedRequest, Reply

from gateway import ConfigError, load_config


def config(url: str, backends: list[dict[str, Any]], **endpoint: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {"u": {"url": url}},
        "endpoints": [
            {"path": "/api/{id}", "method": "POST", "backends": backends, "debug": True, **endpoint}
        ],
    }


def be(name: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "upstream": "u", "path": path, **extra}


def answers(req: RecordedRequest) -> Reply:
    if req.path == "/price":
        return Reply(json={"total": "12", "half": "12.5", "codes": [3, 4], "live": True})
    if req.path == "/orders":
        return Reply(json={"orders": [{"id": "o1", "qty": "2"}, {"id": "o2", "qty": 5.0}]})
    if req.path == "/graphql":
        return Reply(json={"data": {"a": 1}})
    return Reply(json={"path": req.path})


def sent(seen: list[RecordedRequest], path: str) -> Any:
    (request,) = [r for r in seen if r.path == path]
    assert request.headers["content-type"] == "application/json"
    return json.loads(request.body)


async def test_numbers_arrays_booleans_and_objects_arrive_typed(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        template = {
            "sku": "{body.items[*].sku}",
            "qty": "{body.count:int}",
            "gift": "{body.gift:bool}",
            "address": "{body.address}",
            "note": "{body.note}",
            "id": "{id:int}",
            "lang": "{query.lang}",
            "tenant": "{header.X-Tenant}",
            "label": "order {id} for {body.address.city} ({body.count})",
            "fixed": {"version": 2, "tags": ["a"]},
        }
        gw = await start_gateway(
            nursery,
            config(up.url, [be("quote", "/quote", method="POST", body={"template": template})]),
        )
        r = await gw.request(
            "POST",
            "/api/7?lang=fr",
            headers={"X-Tenant": "acme"},
            json={
                "items": [{"sku": "a"}, {"sku": "b"}],
                "count": "3",
                "gift": "true",
                "address": {"city": "Lyon", "zip": 69001},
                "note": None,
            },
        )
        assert r.status_code == 200, r.text
    assert sent(seen, "/quote") == {
        "sku": ["a", "b"],
        "qty": 3,
        "gift": True,
        "address": {"city": "Lyon", "zip": 69001},
        "note": None,
        "id": 7,
        "lang": "fr",
        "tenant": "acme",
        "label": "order 7 for Lyon (3)",
        "fixed": {"version": 2, "tags": ["a"]},
    }


async def test_values_from_other_backends_arrive_typed_and_convert(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        template = {
            "total": "{price.total:int}",
            "codes": "{price.codes}",
            "live": "{price.live}",
            "as_text": "{price.live:str}",
            "order_ids": "{orders.orders[*].id}",
            "quantities": "{orders.orders[*].qty:int}",
        }
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [
                    be("price", "/price", group="price"),
                    be("orders", "/orders", group="orders"),
                    be("charge", "/charge", method="POST", body={"template": template}),
                ],
            ),
        )
        r = await gw.request("POST", "/api/1", json={})
        assert r.status_code == 200, r.text
        assert r.json()["_gateway"]["backends"]["charge"]["depends_on"] == ["price", "orders"]
    assert sent(seen, "/charge") == {
        "total": 12,
        "codes": [3, 4],
        "live": True,
        "as_text": "true",
        "order_ids": ["o1", "o2"],
        "quantities": [2, 5],
    }


async def test_an_upstream_value_that_does_not_convert_is_invalid_reference(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [
                    be("price", "/price", group="price"),
                    be(
                        "charge",
                        "/charge",
                        method="POST",
                        body={"template": {"n": "{price.half:int}"}},
                    ),
                    be("missing", "/m", method="POST", body={"template": {"n": "{price.nope}"}}),
                ],
            ),
        )
        r = await gw.request("POST", "/api/1", json={})
    assert r.status_code == 200
    assert (
        r.headers["x-gateway-backends"]
        == "price=ok, charge=invalid_reference, missing=invalid_reference"
    )
    debug = r.json()["_gateway"]["backends"]
    assert debug["charge"]["reason"] == (
        "{price.half:int}: cannot convert a string that is not an integer to int"
    )
    assert debug["missing"]["reason"] == "{price.nope}: 'nope' is missing"
    assert "12.5" not in json.dumps(debug)  # the value is never told
    assert [r.path for r in seen] == ["/price"]  # neither was called


@pytest.mark.parametrize(
    ("target", "headers", "body", "code", "fields"),
    [
        (
            "/api/1?n=4",
            {},
            {"count": "three", "items": []},
            "invalid_request_body",
            {"in": "body", "path": "$.count"},
        ),
        (
            "/api/1?n=4",
            {},
            {"count": 2.5, "items": []},
            "invalid_request_body",
            {"in": "body", "path": "$.count"},
        ),
        (
            "/api/1?n=4",
            {},
            {"items": []},
            "invalid_request_body",
            {"in": "body", "path": "$.count"},
        ),
        (
            "/api/1?n=4",
            {},
            {"count": 1, "items": [{"sku": "a"}, {}]},
            "invalid_request_body",
            {"in": "body", "path": "$.items[1].sku"},
        ),
        (
            "/api/1?n=4",
            {},
            {"count": 1, "items": {"sku": "a"}},
            "invalid_request_body",
            {"in": "body", "path": "$.items"},
        ),
        (
            "/api/x?n=4",
            {},
            {"count": 1, "items": []},
            "invalid_path_parameter",
            {"in": "path", "parameter": "id"},
        ),
        (
            "/api/1?n=1.5",
            {},
            {"count": 1, "items": []},
            "invalid_query_parameter",
            {"in": "query", "parameter": "n"},
        ),
        (
            "/api/1?n=4",
            {"X-Rush": "maybe"},
            {"count": 1, "items": []},
            "invalid_header",
            {"in": "header", "parameter": "x-rush"},
        ),
    ],
)
async def test_a_client_value_that_is_missing_or_does_not_convert_is_a_400_before_any_call(
    nursery: trio.Nursery,
    target: str,
    headers: dict[str, str],
    body: Any,
    code: str,
    fields: dict[str, str],
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        template = {
            "qty": "{body.count:int}",
            "sku": "{body.items[*].sku}",
            "id": "{id:int}",
            "n": "{query.n:int}",
            "rush": "{header.X-Rush:bool}",
        }
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [
                    be("other", "/other"),
                    be("quote", "/quote", method="POST", body={"template": template}),
                ],
            ),
        )
        r = await gw.request(
            "POST",
            target,
            headers={"X-Rush": "true", **headers},
            json=body,
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == code
        assert {k: error[k] for k in fields} == fields
        assert seen == []  # no upstream, not even the backend without templates
        # the same request, corrected, goes through
        r = await gw.request(
            "POST",
            "/api/1?n=4",
            headers={"X-Rush": "true"},
            json={"count": "1", "items": [{"sku": "a"}]},
        )
        assert r.status_code == 200, r.text
        assert sent(seen, "/quote") == {"qty": 1, "sku": ["a"], "id": 1, "n": 4, "rush": True}


async def test_a_request_without_a_body_is_a_400_naming_the_reference(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, config(up.url, [be("q", "/q/{body.user}")]))
        r = await gw.request("POST", "/api/1")
        assert r.status_code == 400
        assert r.json()["error"] == {
            "code": "invalid_request_body",
            "message": "{body.user} reads the request's JSON body, and the request has none",
            "in": "body",  # no path: there is no body to point into (as for a schema)
            "request_id": r.headers["x-request-id"],
        }
        assert seen == []


@pytest.mark.parametrize(
    "backend",
    [
        be("q", "/q", method="POST", body="forward"),
        be("q", "/q", method="POST", body={"select": "a"}),
        be("q", "/q", method="POST", body={"template": {"n": "{body.n}"}}),
        be("q", "/q/{body.n}"),
        be(
            "q",
            "/graphql",
            graphql={"query": "query($n: Int) { a }", "variables": {"n": "{body.n}"}},
        ),
    ],
    ids=["forward", "select", "template", "path", "graphql"],
)
async def test_every_endpoint_reading_the_body_refuses_a_name_twice_or_a_huge_integer(
    nursery: trio.Nursery, backend: dict[str, Any]
) -> None:
    """What one reader of the body would see is what every other one sees: a body whose
    meaning depends on the parser (which of two equal names, a float for an integer) is
    refused before any upstream is called."""
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, config(up.url, [backend]))
        for content, path in (
            (b'{"a": {"n": 1}, "n": 1, "a": {"n": 2}}', "$.a"),
            (b'{"a": {"n": 123456789012345678901234567890}, "n": 1}', "$.a.n"),
        ):
            r = await gw.request("POST", "/api/1", content=content)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert (error["code"], error["path"]) == ("invalid_request_body", path)
        # a big body is read in a worker thread: the same answer, the loop kept free
        big = b'{"pad": "' + b"x" * 200_000 + b'", "a": {"n": 1, "n": 2}, "n": 1}'
        r = await gw.request("POST", "/api/1", content=big)
        assert (r.status_code, r.json()["error"].get("path")) == (400, "$.a.n"), r.text
        # deeper than orjson writes back (254 levels): refused, not a 500
        deep = b'{"a": {"n": 1}, "n": 1, "x": ' + b"[" * 300 + b"]" * 300 + b"}"
        r = await gw.request("POST", "/api/1", content=deep)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request_body")
        assert seen == []
        r = await gw.request("POST", "/api/1", content=b'{"a": {"n": 1}, "n": 2}')
        assert r.status_code == 200, r.text
        assert len(seen) == 1


async def test_body_references_in_paths_and_headers_are_encoded_like_any_value(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [be("u", "/users/{body.user}?n={body.n}", headers={"X-User": "{body.user}"})],
            ),
        )
        r = await gw.request("POST", "/api/1", json={"user": "jane doe?", "n": 2})
        assert r.status_code == 200
        assert seen[0].target == "/users/jane%20doe%3F?n=2"
        assert seen[0].headers["x-user"] == "jane doe?"
        r = await gw.request("POST", "/api/1", json={"user": "../admin", "n": 2})
        assert r.status_code == 400
        assert r.json()["error"]["path"] == "$.user"
        r = await gw.request("POST", "/api/1", json={"user": ["a"], "n": 2})
        assert r.status_code == 400
        assert len(seen) == 1


async def test_for_each_over_the_clients_array_sends_each_element_typed(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [
                    be(
                        "reserve",
                        "/reserve/{body.items[*].sku}",
                        method="POST",
                        for_each=True,
                        max_calls=3,
                        body={
                            "template": {"qty": "{body.items[*].qty:int}", "user": "{body.user}"}
                        },
                    )
                ],
            ),
        )
        items = [{"sku": "a", "qty": "1"}, {"sku": "b", "qty": 2}]
        r = await gw.request("POST", "/api/1", json={"user": "u", "items": items})
        assert r.status_code == 200, r.text
        assert r.json()["reserve"] == [{"path": "/reserve/a"}, {"path": "/reserve/b"}]
        assert {r.path: json.loads(r.body) for r in seen} == {
            "/reserve/a": {"qty": 1, "user": "u"},
            "/reserve/b": {"qty": 2, "user": "u"},
        }
        seen.clear()
        r = await gw.request(
            "POST", "/api/1", json={"user": "u", "items": [*items, {"sku": "c", "qty": "x"}]}
        )
        assert (r.status_code, r.json()["error"]["path"]) == (400, "$.items[2].qty")
        r = await gw.request("POST", "/api/1", json={"user": "u", "items": items * 2})
        assert r.status_code == 400
        assert r.json()["error"]["path"] == "$.items"
        assert "exceed max_calls 3" in r.json()["error"]["message"]
        assert seen == []


async def test_for_each_over_an_upstream_array_fills_each_call_from_its_element(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(answers)
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up.url,
                [
                    be("orders", "/orders", select="orders", group="orders"),
                    be(
                        "ship",
                        "/ship/{orders[*].id}",
                        method="POST",
                        for_each=True,
                        body={"template": {"qty": "{orders[*].qty:int}", "all": "{orders}"}},
                    ),
                ],
            ),
        )
        r = await gw.request("POST", "/api/1", json={})
        assert r.status_code == 200, r.text
    orders = [{"id": "o1", "qty": "2"}, {"id": "o2", "qty": 5.0}]
    assert sent(seen, "/ship/o1") == {"qty": 2, "all": orders}
    assert sent(seen, "/ship/o2") == {"qty": 5, "all": orders}


# --- config problems ---------------------------------------------------------------------


def problems(cfg: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("b.yaml", {}, text=json.dumps(cfg))
    return [str(p) for p in info.value.problems]


def test_gateway_check_rejects_what_a_template_cannot_resolve() -> None:
    cfg = config(
        "http://127.0.0.1:1",
        [
            be(
                "a",
                "/a",
                method="POST",
                body={"template": {"x": ["{nope.id}", "{zz}"], "y": "{a.id}"}},
            ),
            be("b", "/b/{query.n:int}"),
            be("c", "/c", method="GET", body={"template": {"n": 1}}),
            be("d", "/d", method="POST", body={"template": {"t": "ids: {a.items[*].id}"}}),
            be(
                "e",
                "/e/{a.items[*].id}",
                method="POST",
                for_each=True,
                body={"template": {"o": "{d.x[*].y}"}},
            ),
            be("f", "/f", method="POST", body={"select": "x", "template": {}}),
            be("g", "/g", method="POST", body={"template": {"s": "{jwt.sub}"}}),
            be("body", "/h"),
        ],
    )
    assert problems(cfg) == [
        "b.yaml: endpoints[0].backends[0].body.template.x[0]: unknown backend in {nope.id} "
        "(other backends: b, c, d, e, f, g, body)",
        "b.yaml: endpoints[0].backends[0].body.template.x[1]: unknown path parameter {zz} "
        "(the endpoint path has: id)",
        "b.yaml: endpoints[0].backends[0].body.template.y: {a.id} refers to this backend itself",
        "b.yaml: endpoints[0].backends[1].path: in {query.n:int}: conversions (:int) apply in "
        "body templates and GraphQL variables only",
        "b.yaml: endpoints[0].backends[2].body: sending a body needs POST, PUT or PATCH on the backend",
        "b.yaml: endpoints[0].backends[3].body.template.t: {a.items[*].id} gives an array: it "
        "must be the whole string, not a part of one",
        "b.yaml: endpoints[0].backends[4].for_each: every [*] reference walks the array of "
        "{a.items[*].id} (found {d.x[*].y})",
        "b.yaml: endpoints[0].backends[5].body: give exactly one of select and template",
        "b.yaml: endpoints[0].backends[7].name: 'body' is reserved for {body.NAME} references",
        "b.yaml: endpoints[0].backends[6].body.template.s: {jwt.sub} needs a jwt policy in the "
        "endpoint's auth",
    ]


def test_a_body_reference_needs_an_endpoint_that_takes_a_body() -> None:
    cfg = config(
        "http://127.0.0.1:1",
        [
            be("a", "/a/{body.id}", headers={"X-A": "{body.a}"}),
            be("b", "/b", method="POST", body={"template": {"n": "{body.n:int}"}}),
        ],
        method="GET",
    )
    assert problems(cfg) == [
        "b.yaml: endpoints[0].backends[0].path: {body.id} reads the client's JSON body: the "
        "endpoint's method GET takes none (POST, PUT or PATCH do)",
        "b.yaml: endpoints[0].backends[0].headers.X-A: {body.a} reads the client's JSON body: "
        "the endpoint's method GET takes none (POST, PUT or PATCH do)",
        "b.yaml: endpoints[0].backends[1].body.template.n: {body.n:int} reads the client's JSON "
        "body: the endpoint's method GET takes none (POST, PUT or PATCH do)",
    ]


def test_a_get_endpoint_may_post_a_template_of_other_values() -> None:
    cfg = config(
        "http://127.0.0.1:1",
        [be("a", "/a", method="POST", body={"template": {"n": "{query.n:int}", "id": "{id}"}})],
        method="GET",
    )
    plan = load_config("b.yaml", {}, text=json.dumps(cfg))
    (endpoint,) = plan.endpoints
    assert not endpoint.reads_body and endpoint.reads_request_values
