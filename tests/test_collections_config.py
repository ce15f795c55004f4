"""Config problems of collections (merge, group references, into, on_item_error, shape):
each reported at its place, all in one run, before anything is served."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import ConfigError, load_config
from gateway._cli import main
from gateway._rules.collect import IntoPlan


def cfg(*backends: dict[str, Any], **endpoint: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [{"path": "/x/{id}", "backends": list(backends), **endpoint}],
    }


def b(name: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "upstream": "u", "path": path, **extra}


def problems(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("c.yaml", {}, text=json.dumps(config))
    return [str(p) for p in info.value.problems]


ORDERS = (b("recent", "/r", group="orders"), b("archived", "/a", group="orders"))
AT = "c.yaml: endpoints[0].backends[2]"


def each(**extra: Any) -> dict[str, Any]:
    return b("product", "/p/{orders[*].product_id}", for_each=True, **extra)


def test_an_endpoint_without_collections_has_no_plan_and_one_with_them_has() -> None:
    plain = load_config("c.yaml", {}, text=json.dumps(cfg(*ORDERS)))
    assert plain.endpoints[0].collections is None
    plan = load_config(
        "c.yaml",
        {},
        text=json.dumps(cfg(*ORDERS, each(into="orders[*].product"), shape={"deny": ["x"]})),
    )
    collections = plan.endpoints[0].collections
    assert collections is not None
    assert collections.into == (IntoPlan(2, ("orders",), ("product",), "orders[*].product"),)
    assert collections.readers[2].groups == (0,)
    # the group reference waits for every backend of the group
    assert plan.endpoints[0].backends[2].deps == (0, 1)


def test_defaults_merge_applies_unless_the_endpoint_sets_its_own() -> None:
    config = cfg(*ORDERS)
    config["defaults"] = {"merge": {"arrays": "concat"}}
    config["endpoints"].append({**config["endpoints"][0], "path": "/y", "merge": {}})
    plan = load_config("c.yaml", {}, text=json.dumps(config))
    first, second = plan.endpoints
    assert first.collections is not None and first.collections.concat_arrays
    assert second.collections is None


def test_into_and_on_item_error_need_for_each_and_into_no_group() -> None:
    assert problems(cfg(*ORDERS, b("p", "/p", into="orders[*].product"))) == [
        f"{AT}.into: needs for_each: true (one call per element it fills)"
    ]
    assert problems(cfg(*ORDERS, b("p", "/p", on_item_error="skip"))) == [
        f"{AT}.on_item_error: only for a for_each backend (one call per element)"
    ]
    assert problems(cfg(*ORDERS, each(into="orders[*].product", group="g"))) == [
        f"{AT}.group: a backend with into puts its results into elements, not under a group"
    ]


def test_a_bare_null_for_on_item_error_says_to_quote_it() -> None:
    assert problems(cfg(*ORDERS, each(on_item_error=None))) == [
        f'{AT}.on_item_error: write "null" in quotes: a bare null is YAML\'s null, not the word'
    ]


@pytest.mark.parametrize(
    ("into", "message"),
    [
        ("orders", "write the array, [*], then the key to set, like orders[*].product"),
        ("orders[*]", "name the key each element gets after [*]"),
        ("orders[*][0]", "name the key each element gets after [*]"),
        ("{orders[*].x}", "a path, without braces"),
        ("orders[*].a[*].b", "at most one [*] per reference"),
        ("header.x", "write the array, [*], then the key to set"),
        (
            "body.items[*].p",
            "into fills an array of the response (a group's or a backend's), not of the "
            "client's body",
        ),
        (
            "recent[*].x",
            "fills recent[*] but for_each walks {orders[*].product_id}: into must name that "
            "array (orders[*].KEY)",
        ),
    ],
)
def test_into_must_name_the_array_for_each_walks_then_a_key(into: str, message: str) -> None:
    (found,) = problems(cfg(*ORDERS, each(into=into)))
    assert found.startswith(f"{AT}.into: ")
    assert message in found


def test_into_over_a_backend_sharing_its_group_names_the_group_instead() -> None:
    config = cfg(*ORDERS, b("p", "/p/{recent[*].id}", for_each=True, into="recent[*].product"))
    assert problems(config) == [
        f"{AT}.into: recent shares group 'orders' with archived: the array in the response "
        "is the group's; walk the group instead ({orders[*]...})"
    ]


def test_into_over_a_backend_that_fills_elements_itself_is_refused() -> None:
    config = cfg(
        b("o", "/o", group="g"),
        b("p", "/p/{g[*].id}", for_each=True, into="g[*].x"),
        b("q", "/q/{p[*].id}", for_each=True, into="p[*].y"),
    )
    assert problems(config) == [f"{AT}.into: p puts its own results into elements: it has no array"]


def static(name: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "static": value, **extra}


def test_into_over_a_static_array_whose_elements_are_not_objects_is_refused() -> None:
    into = b("p", "/p/{ids[*]}", for_each=True, into="ids[*].product")
    assert problems(cfg(static("ids", ["p1", "p2"], group="ids"), into)) == [
        "c.yaml: endpoints[0].backends[1].into: in the static value of 'ids', element 0 is a "
        "string, not an object: into ids[*].product sets a key in every element"
    ]
    nested = b("p", "/p/{o.items[*].id}", for_each=True, into="o.items[*].product.detail")
    items = [{"id": "p1", "product": {}}, {"id": "p2", "product": "str"}]
    assert problems(cfg(static("o", {"items": items}, group="o"), nested)) == [
        "c.yaml: endpoints[0].backends[1].into: in the static value of 'o', element 1.product "
        "is a string, not an object: into o.items[*].product.detail sets a key in every element"
    ]
    items[1]["product"] = {"old": 1}  # objects all along the path: fine
    load_config("c.yaml", {}, text=json.dumps(cfg(static("o", {"items": items}), nested)))


def test_a_static_value_that_changes_the_array_into_fills_is_refused() -> None:
    group = static("a", [{"pid": "p1"}], group="orders")
    into = b("p", "/p/{orders[*].pid}", for_each=True, into="orders[*].product")
    message = (
        "c.yaml: endpoints[0].backends[2].into: the static value of 'z' puts 'orders' in the "
        "response, which changes the array into orders[*].product fills; rename the key, or "
        "give that backend a group"
    )
    for value in ({"orders": "oops"}, {"orders": [{"pid": "p3"}]}):
        assert problems(cfg(group, into, static("z", value))) == [
            message.replace("backends[2]", "backends[1]")
        ]
    # before the group in config order: replaced by the group's array, unless concat joins it
    load_config("c.yaml", {}, text=json.dumps(cfg(static("z", {"orders": [1]}), group, into)))
    joined = cfg(group, static("z", {"orders": [{"pid": "p3"}]}), into, merge={"arrays": "concat"})
    assert problems(joined) == [message]
    # a key of the group's object that into does not walk is merged beside it: fine
    items = cfg(
        static("a", {"items": [{"id": 1}]}, group="o"),
        b("p", "/p/{o.items[*].id}", for_each=True, into="o.items[*].x"),
        static("z", {"other": 1}, group="o"),
    )
    load_config("c.yaml", {}, text=json.dumps(items))


def test_a_backend_that_may_put_the_arrays_key_in_the_response_is_a_warning() -> None:
    config = cfg(*ORDERS, each(into="orders[*].product"), b("user", "/u"))
    plan = load_config("c.yaml", {}, text=json.dumps(config))
    assert [str(w) for w in plan.warnings if "into" in w.path] == [
        "c.yaml: endpoints[0].backends[2].into: warning: 'user' merges an object at the top: "
        "a value it gives under 'orders' changes the array into orders[*].product fills, and "
        "this backend then fails (invalid_reference); give it a group, or allow only other "
        "keys"
    ]
    for quiet in (b("user", "/u", group="user"), b("user", "/u", allow=["name", "orders2"])):
        plan = load_config(
            "c.yaml", {}, text=json.dumps(cfg(*ORDERS, each(into="orders[*].p"), quiet))
        )
        assert not [w for w in plan.warnings if "into" in w.path]


def test_a_name_both_backend_and_group_of_others_is_ambiguous_but_a_lone_one_is_the_backend() -> (
    None
):
    config = cfg(b("orders", "/r", group="orders"), b("archived", "/a", group="orders"), each())
    assert problems(config) == [
        f"{AT}.path: {{orders[*].product_id}} is ambiguous: 'orders' is a backend and the "
        "group of orders, archived; rename the backend or the group"
    ]
    alone = cfg(b("orders", "/r", group="orders"), each(into="orders[*].product"))
    plan = load_config("c.yaml", {}, text=json.dumps(alone))
    collections = plan.endpoints[0].collections
    assert collections is not None and not collections.readers  # the backend, not the group


def test_a_backend_cannot_read_its_own_group_and_cycles_through_groups_are_found() -> None:
    assert problems(cfg(*ORDERS, each(group="orders"))) == [
        f"{AT}.path: {{orders[*].product_id}} reads group 'orders', which this backend is part of"
    ]
    assert problems(cfg(b("recent", "/r/{p.x}", group="orders"), b("p", "/p/{orders[0].id}"))) == [
        "c.yaml: endpoints[0].backends[0].path: dependency cycle: recent -> p -> recent"
    ]


def test_an_unknown_name_lists_the_groups_too() -> None:
    assert problems(cfg(*ORDERS, b("p", "/p/{order[*].id}", for_each=True))) == [
        f"{AT}.path: unknown backend in {{order[*].id}} (other backends: recent, archived; "
        "groups: orders)",
    ]


def test_shape_problems_are_reported_at_their_keys() -> None:
    config = cfg(*ORDERS, shape={"select": "a[x]", "allow": ["a[0].b"], "rename": {"a": "b.c"}})
    assert problems(config) == [
        "c.yaml: endpoints[0].shape.select: invalid dot path 'a[x]': 'a[x]' is not a key "
        "that may end in [N] or [*]",
        "c.yaml: endpoints[0].shape.allow: invalid dot path 'a[0].b': [N] picks one element, "
        "and allow, deny and rename apply to every element (write [*] or nothing)",
        "c.yaml: endpoints[0].shape.rename: rename target 'b.c' must be a single non-empty key",
    ]
    assert problems(cfg(*ORDERS, shape={"allow": ["a"], "deny": ["b"]})) == [
        "c.yaml: endpoints[0].shape.allow: use either allow or deny, not both"
    ]


def test_passthrough_endpoints_take_none_of_it() -> None:
    config = cfg(
        b("a", "/a", into="x[*].y", on_item_error="skip"),
        passthrough=True,
        merge={"arrays": "concat"},
        shape={"allow": ["a"]},
    )
    assert problems(config) == [
        "c.yaml: endpoints[0].merge: not used by a passthrough endpoint (the body is streamed)",
        "c.yaml: endpoints[0].shape: not used by a passthrough endpoint (the body is streamed)",
        "c.yaml: endpoints[0].backends[0].into: not used by a passthrough endpoint",
        "c.yaml: endpoints[0].backends[0].on_item_error: not used by a passthrough endpoint",
    ]


def test_gateway_check_reports_every_collections_problem_and_exits_2(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "c.yaml"
    config = cfg(*ORDERS, each(into="recent[*].x"), shape={"select": "a..b"})
    file.write_text(json.dumps(config))
    assert main(["check", str(file)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{file}: endpoints[0].shape.select: invalid dot path 'a..b': segments must be non-empty",
        f"{file}: endpoints[0].backends[2].into: fills recent[*] but for_each walks "
        "{orders[*].product_id}: into must name that array (orders[*].KEY)",
    ]
