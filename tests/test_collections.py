"""Collections over real upstreams: arrays concatenated in config order, references to a
group, each for_each result placed into its element, and the endpoint's shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from conftest import backend_config, start_gateway, start_upstream
from upstream import RecordedRequest, Reply, Upstream

ORDERS_RECENT = [{"id": "o1", "product_id": "p1"}, {"id": "o2", "product_id": "p2"}]
ORDERS_ARCHIVED = [{"id": "o3", "product_id": "p3"}, {"id": "o4", "product_id": "p4"}]
# per-element delays: the last element answers first, the first one last
PRODUCT_DELAYS_S = {"p1": 0.3, "p2": 0.2, "p3": 0.1, "p4": 0.0}


def config(up: Upstream, *endpoints: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {"u": {"url": up.url}},
        "endpoints": list(endpoints),
    }


def b(name: str, path: str, **extra: Any) -> dict[str, Any]:
    return backend_config(name, "u", path, **extra)


def orders_backends(recent_delay_s: float = 0.0) -> list[dict[str, Any]]:
    return [
        b("recent", f"/recent?u={{id}}&delay={recent_delay_s}", select="items", group="orders"),
        b("archived", "/old?u={id}", select="items", group="orders"),
    ]


def shop(failing: frozenset[str] = frozenset(), fail_delay_s: float = 0.05) -> Any:
    """The orders and catalog services: ``/recent`` (after ``?delay=`` seconds), ``/old``,
    ``/products/ID`` after :data:`PRODUCT_DELAYS_S` (404 after ``fail_delay_s`` for the
    ``failing`` ids)."""

    async def handler(req: RecordedRequest) -> Reply:
        if req.path == "/recent":
            delay_s = float(dict(p.split("=") for p in req.query.split("&"))["delay"])
            return Reply(json={"items": ORDERS_RECENT}, delay_s=delay_s)
        if req.path == "/old":
            return Reply(json={"items": ORDERS_ARCHIVED})
        pid = req.path.removeprefix("/products/")
        if pid in failing:
            return Reply(status=404, json={"error": "no such product"}, delay_s=fail_delay_s)
        return Reply(
            json={"id": pid, "name": f"name of {pid}", "stock": 3},
            delay_s=PRODUCT_DELAYS_S.get(pid, 0.0),
        )

    return handler


async def test_arrays_under_one_group_concatenate_in_config_order_not_arrival_order(
    nursery: trio.Nursery,
) -> None:
    """The first backend answers 250 ms after the second: concat still puts its elements
    first, and replace (the default) keeps the later backend's array."""
    with trio.fail_after(10):
        up = await start_upstream(nursery, shop())
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    "path": "/concat/{id}",
                    "merge": {"arrays": "concat"},
                    "debug": True,
                    "backends": orders_backends(recent_delay_s=0.25),
                },
                {"path": "/replace/{id}", "backends": orders_backends(recent_delay_s=0.25)},
            ),
        )
        r = await gw.get("/concat/7")
        assert r.status_code == 200, r.text
        body = r.json()
        debug = body.pop("_gateway")["backends"]
        # the later backend really did answer first
        assert debug["archived"]["duration_ms"] + 200 < debug["recent"]["duration_ms"]
        assert body == {"orders": ORDERS_RECENT + ORDERS_ARCHIVED}

        r = await gw.get("/replace/7")
        assert r.json() == {"orders": ORDERS_ARCHIVED}


async def test_arrays_of_merged_objects_concatenate_under_their_top_level_key(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/a": Reply(json={"items": [1, 2], "total": 2, "meta": {"a": 1}}, delay_s=0.2),
                "/b": Reply(json={"items": [3], "total": 1, "meta": {"b": 2}}),
            },
        )
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    "path": "/x/{id}",
                    "merge": {"arrays": "concat"},
                    "backends": [b("a", "/a"), b("b", "/b")],
                },
            ),
        )
        r = await gw.get("/x/1")
        # arrays join; anything else is replaced by the later backend; nothing is deep-merged
        assert r.json() == {"items": [1, 2, 3], "total": 1, "meta": {"b": 2}}


async def test_a_group_reference_waits_for_every_backend_of_the_group(
    nursery: trio.Nursery,
) -> None:
    """product walks the merged group: it starts once both recent (slow) and archived have
    answered, and calls once per element of both."""
    with trio.fail_after(10):
        up = await start_upstream(nursery, shop())
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    "path": "/api/{id}",
                    "merge": {"arrays": "concat"},
                    "debug": True,
                    "backends": [
                        *orders_backends(recent_delay_s=0.2),
                        b(
                            "product",
                            "/products/{orders[*].product_id}",
                            for_each=True,
                            allow=["id"],
                            group="products",
                        ),
                    ],
                },
            ),
        )
        r = await gw.get("/api/7")
        assert r.status_code == 200, r.text
        body = r.json()
        debug = body.pop("_gateway")["backends"]
        assert debug["product"]["depends_on"] == ["recent", "archived"]
        assert debug["product"]["started_ms"] >= 200
        assert body["products"] == [{"id": p} for p in ("p1", "p2", "p3", "p4")]
        assert sorted(r.path for r in up.requests if r.path.startswith("/products/")) == [
            "/products/p1",
            "/products/p2",
            "/products/p3",
            "/products/p4",
        ]


async def test_a_group_reference_reads_what_the_group_shows_when_one_backend_fails(
    nursery: trio.Nursery,
) -> None:
    """archived fails: the group is recent's elements alone (and its default, had it one);
    with every backend of the group failed, the reader's dependency failed."""
    with trio.fail_after(10):

        async def handler(req: RecordedRequest) -> Reply:
            if req.path == "/old":
                return Reply(status=503)
            if req.path == "/recent" and "u=none" in req.query:
                return Reply(status=503)
            return await shop()(req)

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    "path": "/api/{id}",
                    "merge": {"arrays": "concat"},
                    "backends": [
                        *orders_backends(),
                        b(
                            "product",
                            "/products/{orders[*].product_id}",
                            for_each=True,
                            allow=["id"],
                            group="products",
                        ),
                    ],
                },
            ),
        )
        r = await gw.get("/api/7")
        assert r.headers["x-gateway-backends"] == "recent=ok, archived=http_503, product=ok"
        assert r.json() == {
            "orders": ORDERS_RECENT,
            "products": [{"id": "p1"}, {"id": "p2"}],
        }
        r = await gw.get("/api/none")
        assert r.status_code == 502
        assert r.json()["backends"] == {
            "recent": "http_503",
            "archived": "http_503",
            "product": "dependency_failed",
        }


def into_endpoint(mode: str, **product: Any) -> dict[str, Any]:
    return {
        "path": "/api/{id}",
        "merge": {"arrays": "concat"},
        "debug": True,
        "backends": [
            *orders_backends(),
            b(
                "product",
                "/products/{orders[*].product_id}",
                for_each=True,
                into="orders[*].product",
                on_item_error=mode,
                allow=["name"],
                **product,
            ),
        ],
    }


def placed(body: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(o["id"], o.get("product", "absent")) for o in body["orders"]]


@pytest.mark.parametrize("mode", ["skip", "null"])
async def test_into_places_each_result_in_its_element_whatever_the_finishing_order(
    nursery: trio.Nursery, mode: str
) -> None:
    """p4 answers first and p1 last; p2 fails: under skip its order is left out, under
    "null" its product is null; the backend stays ok and the response complete."""
    with trio.fail_after(10):
        up = await start_upstream(nursery, shop(failing=frozenset({"p2"})))
        gw = await start_gateway(nursery, config(up, into_endpoint(mode)))
        r = await gw.get("/api/7")
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-backends"] == "recent=ok, archived=ok, product=ok"
        assert r.headers["x-gateway-complete"] == "true"
        body = r.json()
        assert body["_gateway"]["backends"]["product"]["failed_items"] == 1
        expected = [
            ("o1", {"name": "name of p1"}),
            ("o2", None),
            ("o3", {"name": "name of p3"}),
            ("o4", {"name": "name of p4"}),
        ]
        if mode == "skip":
            del expected[1]
        assert placed(body) == expected
        # the other fields of each element are kept
        assert body["orders"][0]["product_id"] == "p1"


async def test_into_fail_mode_fails_the_backend_and_leaves_the_elements_as_they_were(
    nursery: trio.Nursery,
) -> None:
    """The first failed call fails the backend at once and cancels the calls still running
    (p1, the slowest); without a default the orders are left as they were."""
    with trio.fail_after(10):
        up = await start_upstream(nursery, shop(failing=frozenset({"p2"})))
        gw = await start_gateway(nursery, config(up, into_endpoint("fail")))
        start = trio.current_time()
        r = await gw.get("/api/7")
        assert trio.current_time() - start < 0.25  # not waiting for p1's 300 ms
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-backends"] == "recent=ok, archived=ok, product=http_404"
        assert r.headers["x-gateway-complete"] == "false"
        body = r.json()
        assert body["orders"] == ORDERS_RECENT + ORDERS_ARCHIVED
        await up.aborted_event.wait()
        assert "/products/p1" in up.aborted


async def test_into_puts_the_default_into_every_element_when_the_backend_fails_whole(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, shop(failing=frozenset({"p2"})))
        gw = await start_gateway(
            nursery,
            config(
                up,
                into_endpoint("fail", default={"name": "unknown"}),
                {**into_endpoint("skip", default=None, max_calls=3), "path": "/over/{id}"},
            ),
        )
        r = await gw.get("/api/7")
        assert placed(r.json()) == [(o, {"name": "unknown"}) for o in ("o1", "o2", "o3", "o4")]
        # four elements over max_calls 3: no call at all, the default (null) everywhere
        r = await gw.get("/over/7")
        assert r.headers["x-gateway-backends"] == (
            "recent=ok, archived=ok, product=invalid_reference"
        )
        assert placed(r.json()) == [(o, None) for o in ("o1", "o2", "o3", "o4")]
        assert up.calls("/products/p1") == 1  # the first endpoint's call only


async def test_into_over_a_backends_array_lands_where_that_backend_is_merged(
    nursery: trio.Nursery,
) -> None:
    """A backend without group whose result is an object merges at the top level: into
    fills the array there."""
    with trio.fail_after(10):

        async def handler(req: RecordedRequest) -> Reply:
            if req.path == "/orders":
                return Reply(json={"items": ORDERS_RECENT, "count": 2})
            return await shop()(req)

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    "path": "/api/{id}",
                    "backends": [
                        b("orders", "/orders"),
                        b(
                            "product",
                            "/products/{orders.items[*].product_id}",
                            for_each=True,
                            into="orders.items[*].detail.product",
                            select="name",
                        ),
                    ],
                },
            ),
        )
        r = await gw.get("/api/1")
        assert r.json() == {
            "items": [
                {"id": "o1", "product_id": "p1", "detail": {"product": "name of p1"}},
                {"id": "o2", "product_id": "p2", "detail": {"product": "name of p2"}},
            ],
            "count": 2,
        }


async def test_into_whose_array_another_backend_changed_fails_the_backend_with_a_reason(
    nursery: trio.Nursery,
) -> None:
    """extra, merged after the group, brings one more order under the group's key: the
    four results no longer match the five elements, and placing none of them quietly as
    ``ok`` would lose them; product is invalid_reference and says why."""
    with trio.fail_after(10):

        async def handler(req: RecordedRequest) -> Reply:
            if req.path == "/extra":
                return Reply(json={"orders": [{"id": "o9", "product_id": "p9"}]})
            return await shop()(req)

        up = await start_upstream(nursery, handler)
        endpoint = into_endpoint("null")
        endpoint["backends"].append(b("extra", "/extra"))
        gw = await start_gateway(nursery, config(up, endpoint))
        r = await gw.get("/api/7")
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-backends"] == (
            "recent=ok, archived=ok, product=invalid_reference, extra=ok"
        )
        assert r.headers["x-gateway-complete"] == "false"
        body = r.json()
        assert body["_gateway"]["backends"]["product"]["reason"] == (
            "into orders[*].product: the array has 5 elements, not the 4 the calls were made "
            "for (another backend changed it)"
        )
        assert [p for _, p in placed(body)] == ["absent"] * 5


@pytest.mark.parametrize("mode", ["fail", "skip", "null"])
async def test_an_element_that_cannot_take_its_result_is_a_failed_item(
    nursery: trio.Nursery, mode: str
) -> None:
    """o2's detail is a string: its product has nowhere to go."""
    with trio.fail_after(10):
        orders = [
            {"id": "o1", "product_id": "p1"},
            {"id": "o2", "product_id": "p2", "detail": "old"},
            {"id": "o3", "product_id": "p3", "detail": {"x": 1}},
        ]

        async def handler(req: RecordedRequest) -> Reply:
            if req.path == "/orders":
                return Reply(json=orders)
            return await shop()(req)

        up = await start_upstream(nursery, handler)
        product = b(
            "product",
            "/products/{orders[*].product_id}",
            for_each=True,
            into="orders[*].detail.product",
            on_item_error=mode,
            select="name",
        )
        endpoint = {
            "path": "/api/{id}",
            "debug": True,
            "backends": [b("orders", "/orders", group="orders"), product],
        }
        gw = await start_gateway(nursery, config(up, endpoint))
        r = await gw.get("/api/1")
        assert r.status_code == 200, r.text
        body = r.json()
        debug = body.pop("_gateway")["backends"]["product"]
        if mode == "fail":
            assert debug["outcome"] == "invalid_reference"
            assert debug["reason"] == (
                "into orders[*].detail.product: element 1.detail is a string, not an object"
            )
            assert body == {"orders": orders}
            return
        assert (debug["outcome"], debug["failed_items"]) == ("ok", 1)
        first = {**orders[0], "detail": {"product": "name of p1"}}
        third = {**orders[2], "detail": {"x": 1, "product": "name of p3"}}
        kept = [first, third] if mode == "skip" else [first, orders[1], third]
        assert body == {"orders": kept}


@pytest.mark.parametrize("mode", ["fail", "skip", "null"])
async def test_an_element_without_the_referenced_value_is_a_failed_item_under_skip_and_null(
    nursery: trio.Nursery, mode: str
) -> None:
    """o2 has no product_id and the third element is a number: no call can be made for
    them. Under fail that fails the backend before any call; under skip and "null" they
    are failed items, and the other elements are filled."""
    with trio.fail_after(10):
        orders = [{"id": "o1", "product_id": "p1"}, {"id": "o2"}, 5]

        async def handler(req: RecordedRequest) -> Reply:
            if req.path == "/orders":
                return Reply(json=orders)
            return await shop()(req)

        up = await start_upstream(nursery, handler)
        product = b(
            "product",
            "/products/{orders[*].product_id}",
            for_each=True,
            into="orders[*].product",
            on_item_error=mode,
            select="name",
        )
        endpoint = {
            "path": "/api/{id}",
            "debug": True,
            "backends": [b("orders", "/orders", group="orders"), product],
        }
        gw = await start_gateway(nursery, config(up, endpoint))
        r = await gw.get("/api/1")
        body = r.json()
        debug = body.pop("_gateway")["backends"]["product"]
        if mode == "fail":
            assert debug["outcome"] == "invalid_reference"
            assert debug["reason"] == "{orders[*].product_id}: 'product_id' is missing"
            assert up.calls("/products/p1") == 0
            return
        assert (debug["outcome"], debug["failed_items"]) == ("ok", 2)
        first = {**orders[0], "product": "name of p1"}
        assert body == {
            "orders": [first] if mode == "skip" else [first, {"id": "o2", "product": None}, 5]
        }


async def test_shape_with_wildcards_shapes_the_merged_body_but_not_the_debug_block(
    nursery: trio.Nursery,
) -> None:
    """The issue's example: orders from two backends, a product into each, then only the
    orders' ids and their products' names."""
    with trio.fail_after(10):
        up = await start_upstream(nursery, shop())
        endpoint = into_endpoint("null")
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    **endpoint,
                    "backends": [*endpoint["backends"][:2], {**endpoint["backends"][2]}],
                    "shape": {"allow": ["orders[*].id", "orders[*].product.name"]},
                },
                {
                    **endpoint,
                    "path": "/names/{id}",
                    "debug": False,
                    "shape": {"select": "orders[*].product.name"},
                },
                {
                    **endpoint,
                    "path": "/renamed/{id}",
                    "debug": False,
                    "shape": {"deny": ["orders[*].product_id"], "rename": {"orders[*].id": "n"}},
                },
                {**endpoint, "path": "/missing/{id}", "shape": {"select": "nothing[*].x"}},
            ),
        )
        r = await gw.get("/api/7")
        body = r.json()
        assert set(body["_gateway"]["backends"]) == {"recent", "archived", "product"}
        del body["_gateway"]
        assert body == {
            "orders": [{"id": f"o{i}", "product": {"name": f"name of p{i}"}} for i in range(1, 5)]
        }
        r = await gw.get("/names/7")
        assert r.json() == [f"name of p{i}" for i in range(1, 5)]
        r = await gw.get("/renamed/7")
        assert r.json()["orders"][0] == {"n": "o1", "product": {"name": "name of p1"}}
        r = await gw.get("/missing/7")
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "shape_select_missing"
        assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("mode", "expected"), [("skip", ["p1", "p3"]), ("null", ["p1", None, "p3"])]
)
async def test_on_item_error_without_into_shapes_the_backends_own_list(
    nursery: trio.Nursery, mode: str, expected: list[str | None]
) -> None:
    with trio.fail_after(10):

        async def handler(req: RecordedRequest) -> Reply:
            if req.path == "/list":
                return Reply(json=[{"id": "p1"}, {"id": "p2"}, {"id": "p3"}])
            return await shop(failing=frozenset({"p2"}))(req)

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    "path": "/api/{id}",
                    "backends": [
                        b("list", "/list", group="list"),
                        b(
                            "products",
                            "/products/{list[*].id}",
                            for_each=True,
                            on_item_error=mode,
                            select="id",
                            group="products",
                        ),
                    ],
                },
            ),
        )
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == "list=ok, products=ok"
        assert r.json()["products"] == expected


async def test_a_group_reference_runs_while_one_backend_of_the_group_is_skipped(
    nursery: trio.Nursery,
) -> None:
    """archived is only called with ?archive=1: without it, product walks recent's orders
    alone; when every backend of the group is skipped, so is product."""
    with trio.fail_after(10):
        up = await start_upstream(nursery, shop())
        recent, archived = orders_backends()
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    "path": "/api/{id}",
                    "merge": {"arrays": "concat"},
                    "backends": [
                        {**recent, "when": {"query": "recent"}},
                        {**archived, "when": {"query": "archive"}},
                        b(
                            "product",
                            "/products/{orders[*].product_id}",
                            for_each=True,
                            into="orders[*].product",
                            select="id",
                        ),
                    ],
                },
            ),
        )
        r = await gw.get("/api/7?recent=1")
        assert r.headers["x-gateway-backends"] == "recent=ok, archived=skipped, product=ok"
        assert placed(r.json()) == [("o1", "p1"), ("o2", "p2")]
        r = await gw.get("/api/7?recent=1&archive=1")
        assert [p for _, p in placed(r.json())] == ["p1", "p2", "p3", "p4"]
        r = await gw.get("/api/7")
        assert r.headers["x-gateway-backends"] == (
            "recent=skipped, archived=skipped, product=skipped"
        )
        assert r.status_code == 200
        assert r.json() == {}


async def test_a_group_reference_in_a_body_template_and_graphql_variables_reads_the_group(
    nursery: trio.Nursery,
) -> None:
    """The issue's example reads a group from a body template too: the body and the
    GraphQL variables carry the merged group's values, in config order."""
    with trio.fail_after(10):
        base = shop()

        async def handler(req: RecordedRequest) -> Reply:
            if req.path in ("/quote", "/graphql"):
                return Reply(json={"data": {"ok": True}} if req.path == "/graphql" else {})
            return await base(req)

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            config(
                up,
                {
                    "path": "/api/{id}",
                    "merge": {"arrays": "concat"},
                    "backends": [
                        *orders_backends(recent_delay_s=0.1),
                        b(
                            "quote",
                            "/quote",
                            method="POST",
                            body={"template": {"ids": "{orders[*].product_id}"}},
                            group="quote",
                        ),
                        {
                            "name": "stock",
                            "upstream": "u",
                            "path": "/graphql",
                            "graphql": {
                                "query": "query($ids: [ID!]) { stock(ids: $ids) { id } }",
                                "variables": {
                                    "ids": "{orders[*].product_id}",
                                    "first": "{orders[0].id}",
                                },
                            },
                            "group": "stock",
                        },
                    ],
                },
            ),
        )
        r = await gw.get("/api/7")
        assert r.status_code == 200, r.text
        sent = {
            req.path: json.loads(req.body)
            for req in up.requests
            if req.path in ("/quote", "/graphql")
        }
        assert sent["/quote"] == {"ids": ["p1", "p2", "p3", "p4"]}
        assert sent["/graphql"]["variables"] == {"ids": ["p1", "p2", "p3", "p4"], "first": "o1"}
