"""The pure core of collections (gateway._rules.collect): merging with concat, a group's
value, placing results into elements, and the endpoint's shape."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._rules.aggregate import BackendResult, Outcome, Placement, aggregate, merge
from gateway._rules.collect import (
    CollectionsPlan,
    GroupPlan,
    IntoPlan,
    ItemResults,
    Unplaced,
    blocked,
    failed_items,
    group_value,
    listed,
    merge_collected,
    place_into,
)
from gateway._rules.graph import skipped_by_condition
from gateway._rules.transform import SelectMissing, Transform


def place(name: str, group: str | None = None, *, default: Any = None, has_default: bool = False):
    return Placement(name, False, group, has_default, default)


def ok(value: Any) -> BackendResult:
    return BackendResult(Outcome.OK, value)


FAILED = BackendResult(Outcome.TIMEOUT)
SKIPPED = BackendResult(Outcome.SKIPPED)


# --- merge with concat ---------------------------------------------------------------------


def test_arrays_of_one_group_concatenate_in_config_order() -> None:
    placements = [place("a", "orders"), place("b", "orders"), place("c", "orders")]
    results = [ok([1, 2]), ok([3]), ok([])]
    assert merge_collected(placements, results, True) == {"orders": [1, 2, 3]}
    assert merge_collected(placements, results, False) == {"orders": []}


def test_arrays_under_one_top_level_key_of_merged_objects_concatenate() -> None:
    placements = [place("a"), place("b")]
    results = [ok({"items": [1], "n": 1}), ok({"items": [2], "n": 2})]
    assert merge_collected(placements, results, True) == {"items": [1, 2], "n": 2}


def test_arrays_under_one_key_of_objects_sharing_a_group_concatenate() -> None:
    placements = [place("a", "g"), place("b", "g")]
    results = [ok({"items": [1], "x": 1}), ok({"items": [2], "y": 2})]
    assert merge_collected(placements, results, True) == {"g": {"items": [1, 2], "x": 1, "y": 2}}


def test_an_array_meeting_anything_else_is_replaced_by_the_later_value() -> None:
    placements = [place("a", "g"), place("b", "g")]
    assert merge_collected(placements, [ok([1]), ok({"k": 1})], True) == {"g": {"k": 1}}
    assert merge_collected(placements, [ok({"k": 1}), ok([1])], True) == {"g": [1]}
    assert merge_collected(placements, [ok("x"), ok([1])], True) == {"g": [1]}


def test_the_merge_stays_shallow() -> None:
    """Arrays two levels down are not joined, objects are not deep-merged."""
    placements = [place("a"), place("b")]
    results = [ok({"o": {"items": [1], "p": 1}}), ok({"o": {"items": [2]}})]
    assert merge_collected(placements, results, True) == {"o": {"items": [2]}}


def test_a_failed_backend_contributes_its_default_and_a_skipped_one_nothing() -> None:
    placements = [
        place("a", "g"),
        place("b", "g", default=["d"], has_default=True),
        place("c", "g"),
    ]
    assert merge_collected(placements, [ok([1]), FAILED, SKIPPED], True) == {"g": [1, "d"]}
    assert merge_collected(placements, [ok([1]), ok([2]), FAILED], True) == {"g": [1, 2]}


def test_item_results_contribute_the_list_the_body_shows() -> None:
    skip = ItemResults((1, None, 3), frozenset({1}), "skip")
    null = ItemResults((1, None, 3), frozenset({1}), "null")
    assert skip.as_list() == [1, 3]
    assert null.as_list() == [1, None, 3]
    assert listed(skip) == [1, 3]
    assert listed([4]) == [4]
    placements = [place("a", "g"), place("b", "g")]
    assert merge_collected(placements, [ok(skip), ok(null)], True) == {"g": [1, 3, 1, None, 3]}
    assert failed_items(ok(skip)) == 1
    assert failed_items(ok([1])) == 0


def test_an_embedded_backend_has_no_place_of_its_own() -> None:
    placements = [place("a", "g"), place("b")]
    assert merge_collected(placements, [ok([1]), ok([2])], False, frozenset({1})) == {"g": [1]}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abg"), inner),
    max_leaves=12,
)
_rows = st.lists(
    st.tuples(
        _json,
        st.sampled_from([Outcome.OK, Outcome.TIMEOUT, Outcome.SKIPPED]),
        st.none() | st.sampled_from(["g", "h", "a"]),
        st.booleans(),
        _json,
    ),
    min_size=1,
    max_size=5,
)


def _backends(rows: list[Any]) -> tuple[list[Placement], list[BackendResult]]:
    placements = [
        Placement(f"b{i}", False, group, has_default, default)
        for i, (_, _, group, has_default, default) in enumerate(rows)
    ]
    return placements, [BackendResult(outcome, value) for value, outcome, *_ in rows]


@settings(max_examples=300, deadline=None)
@given(_rows)
def test_without_concat_the_merge_is_the_hot_paths_merge(rows: list[Any]) -> None:
    placements, results = _backends(rows)
    assert merge_collected(placements, results, False) == merge(placements, results)


@settings(max_examples=300, deadline=None)
@given(_rows)
def test_concat_never_mutates_and_only_joins_arrays(rows: list[Any]) -> None:
    placements, results = _backends(rows)
    before = copy.deepcopy((placements, results))
    joined = merge_collected(placements, results, True)
    replaced = merge(placements, results)
    assert (placements, results) == before
    assert joined.keys() == replaced.keys()
    for key, value in joined.items():
        if value == replaced[key]:
            continue
        if isinstance(value, dict):
            # objects sharing a group: one level down, the same holds for their members
            assert isinstance(replaced[key], dict) and value.keys() == replaced[key].keys()
            pairs = [(v, replaced[key][k]) for k, v in value.items() if v != replaced[key][k]]
        else:
            pairs = [(value, replaced[key])]
        for mine, theirs in pairs:
            # only an array can differ, and it ends with the array the later backend put
            assert isinstance(mine, list) and isinstance(theirs, list)
            assert mine[len(mine) - len(theirs) :] == theirs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(), max_size=4), min_size=1, max_size=5))
def test_concat_of_one_group_is_its_arrays_in_config_order(arrays: list[list[int]]) -> None:
    placements = [place(f"b{i}", "g") for i in range(len(arrays))]
    body = merge_collected(placements, [ok(a) for a in arrays], True)
    assert body == {"g": [x for a in arrays for x in a]}


# --- a group's value -----------------------------------------------------------------------


def test_a_groups_value_is_what_the_merge_puts_under_it() -> None:
    placements = [place("a", "g"), place("x"), place("b", "g", default=[0], has_default=True)]
    group = GroupPlan("g", (0, 2))
    assert group_value(group, placements, [ok([1]), ok({"g": "no"}), FAILED], True) == (
        True,
        [1, 0],
    )
    assert group_value(group, placements, [ok([1]), None, ok([2])], False) == (True, [2])


def test_a_group_without_any_value_has_none() -> None:
    placements = [place("a", "g"), place("b", "g")]
    group = GroupPlan("g", (0, 1))
    assert group_value(group, placements, [FAILED, SKIPPED], True) == (False, None)
    assert group_value(group, placements, [SKIPPED, ok(None)], True) == (True, None)


def test_a_reader_is_skipped_only_when_every_backend_of_its_group_is() -> None:
    # 0 and 1 form the group 2 reads; 3 depends on 0 directly
    deps = [(), (), (0, 1), (0,)]
    groups = {2: ((), ((0, 1),))}
    assert skipped_by_condition(deps, [False, True, True, True], groups) == [
        True,
        False,
        False,
        True,
    ]
    assert skipped_by_condition(deps, [False, False, True, True], groups)[2] is True
    assert skipped_by_condition(deps, [True, True, False, True], groups)[2] is True
    # without the groups, one skipped dependency skips it, as for any backend
    assert skipped_by_condition(deps, [False, True, True, True])[2] is True


# --- into ----------------------------------------------------------------------------------

ORDERS = [{"id": "o1"}, {"id": "o2"}, {"id": "o3"}]
INTO = IntoPlan(1, ("orders",), ("product",), "orders[*].product")


def into(result: BackendResult, *, default: Any = None, has_default: bool = False) -> Any:
    body, unplaced = into_unplaced(result, default=default, has_default=has_default)
    assert unplaced == {}
    return body


def into_unplaced(
    result: BackendResult, body: Any = None, *, default: Any = None, has_default: bool = False
) -> tuple[Any, dict[int, Unplaced]]:
    placements = [place("orders", "orders"), place("p", default=default, has_default=has_default)]
    body = {"orders": ORDERS, "other": 1} if body is None else body
    return place_into(body, [INTO], placements, [ok(ORDERS), result])


def test_each_result_goes_into_the_element_of_its_index() -> None:
    body = into(ok(["a", "b", "c"]))
    assert body == {
        "orders": [
            {"id": "o1", "product": "a"},
            {"id": "o2", "product": "b"},
            {"id": "o3", "product": "c"},
        ],
        "other": 1,
    }
    assert ORDERS == [{"id": "o1"}, {"id": "o2"}, {"id": "o3"}]  # never mutated


def test_a_failed_call_drops_its_element_under_skip_and_is_null_under_null() -> None:
    skip = ItemResults(("a", None, "c"), frozenset({1}), "skip")
    assert [o.get("product") for o in into(ok(skip))["orders"]] == ["a", "c"]
    assert [o["id"] for o in into(ok(skip))["orders"]] == ["o1", "o3"]
    null = ItemResults(("a", None, "c"), frozenset({1}), "null")
    assert [o["product"] for o in into(ok(null))["orders"]] == ["a", None, "c"]


def test_a_whole_failure_puts_the_default_everywhere_or_leaves_the_elements() -> None:
    body = into(FAILED, default={"name": "?"}, has_default=True)
    assert [o["product"] for o in body["orders"]] == [{"name": "?"}] * 3
    assert into(FAILED)["orders"] == ORDERS
    assert into(SKIPPED, default=1, has_default=True)["orders"] == ORDERS


def test_an_array_that_changed_length_or_is_missing_places_nothing_and_says_why() -> None:
    body, unplaced = into_unplaced(ok(["a", "b"]))
    assert body["orders"] == ORDERS
    assert unplaced == {
        1: Unplaced(
            "into orders[*].product: the array has 3 elements, not the 2 the calls were made "
            "for (another backend changed it)"
        )
    }
    for merged, what in (({"x": 1}, "not in the response"), ({"orders": {}}, "an object")):
        body, unplaced = into_unplaced(ok(["a"]), merged)
        assert body == merged
        assert unplaced == {1: Unplaced(f"into orders[*].product: the array is {what}")}
    # a backend that failed has nothing to place: nothing to say
    assert into_unplaced(FAILED, {"x": 1}) == ({"x": 1}, {})


def test_into_creates_the_objects_a_key_path_needs_and_names_what_is_not_an_object() -> None:
    plan = IntoPlan(1, ("g", "items"), ("detail", "product"), "g.items[*].detail.product")
    body = {"g": {"items": [{"id": 1}, "scalar", {"detail": 5}, {"detail": {"x": 1}}]}}
    placements = [place("g", "g"), place("p")]
    out, unplaced = place_into(body, [plan], placements, [ok(None), ok(["a", "b", "c", "d"])])
    assert out == {
        "g": {
            "items": [
                {"id": 1, "detail": {"product": "a"}},
                "scalar",
                {"detail": 5},
                {"detail": {"x": 1, "product": "d"}},
            ]
        }
    }
    assert body["g"]["items"][3] == {"detail": {"x": 1}}
    assert unplaced == {
        1: Unplaced(
            "into g.items[*].detail.product: element 1 is a string, not an object",
            frozenset({1, 2}),
        )
    }
    assert blocked({"detail": 5}, ("detail", "product"), 2) == (
        "element 2.detail is a number, not an object"
    )


def test_several_backends_filling_one_array_keep_their_indexes_when_one_skips() -> None:
    first = IntoPlan(1, ("orders",), ("a",))
    second = IntoPlan(2, ("orders",), ("b",))
    placements = [place("orders", "orders"), place("p"), place("q")]
    skip = ItemResults((1, None, 3), frozenset({1}), "skip")
    out, _ = place_into(
        {"orders": ORDERS}, [first, second], placements, [ok(None), ok(skip), ok([7, 8, 9])]
    )
    assert out["orders"] == [{"id": "o1", "a": 1, "b": 7}, {"id": "o3", "a": 3, "b": 9}]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from("abc"), st.integers(), max_size=2), max_size=6),
    st.data(),
    st.sampled_from(["skip", "null"]),
)
def test_placement_is_by_index_and_never_mutates(
    elements: list[dict[str, int]], data: st.DataObject, mode: Any
) -> None:
    values = data.draw(st.lists(st.integers(), min_size=len(elements), max_size=len(elements)))
    failed = frozenset(data.draw(st.sets(st.integers(0, len(elements) - 1))) if elements else set())
    items = ItemResults(
        tuple(None if i in failed else v for i, v in enumerate(values)), failed, mode
    )
    body = {"arr": elements}
    before = copy.deepcopy(body)
    placements = [place("arr", "arr"), place("p")]
    out, unplaced = place_into(
        body, [IntoPlan(1, ("arr",), ("k",))], placements, [ok(None), ok(items)]
    )
    assert unplaced == {}
    assert body == before
    kept = [i for i in range(len(elements)) if not (mode == "skip" and i in failed)]
    assert out["arr"] == [{**elements[i], "k": None if i in failed else values[i]} for i in kept]


# --- settling: results that find no place are not ok --------------------------------------

PLAN = CollectionsPlan(
    first_slot=3, concat_arrays=True, into=(IntoPlan(2, ("orders",), ("p",), "orders[*].p"),)
)


def settle(orders: Any, result: BackendResult, other: Any = None, default: Any = None) -> Any:
    """An orders group, another backend (a static value, say) and the into backend (with
    ``default`` if not None)."""
    placements = [
        place("a", "orders"),
        place("z"),
        place("p", default=default, has_default=default is not None),
    ]
    results = [ok(orders), ok(other) if other is not None else SKIPPED, result]
    settled, build = PLAN.settle(placements, results)
    return settled[2], build(placements, settled)


def test_an_array_another_backend_lengthened_fails_the_into_backend_with_its_reason() -> None:
    result, body = settle([{"id": 1}, {"id": 2}], ok(["x", "y"]), {"orders": [{"id": 3}]})
    assert result.outcome == Outcome.INVALID_REFERENCE
    assert "the array has 3 elements, not the 2" in result.detail
    assert body == {"orders": [{"id": 1}, {"id": 2}, {"id": 3}]}
    # its default then goes into every element, as for any failure of the backend
    result, body = settle([{"id": 1}], ok(["x"]), {"orders": [{"id": 2}]}, {"n": "?"})
    assert result.outcome == Outcome.INVALID_REFERENCE
    assert body == {"orders": [{"id": 1, "p": {"n": "?"}}, {"id": 2, "p": {"n": "?"}}]}
    result, body = settle([{"id": 1}], ok(["x"]), {"orders": "oops"})
    assert result.detail == "into orders[*].p: the array is a string"
    assert body == {"orders": "oops"}


def test_a_required_into_backend_whose_results_find_no_place_fails_the_request() -> None:
    placements = [place("a", "orders"), place("z"), Placement("p", True, None, False)]
    results = [ok([{"id": 1}]), ok({"orders": [{"id": 2}]}), ok(["x"])]
    settled, build = PLAN.settle(placements, results)
    answer = aggregate(placements, settled, None, build)
    assert answer.status == 502
    assert answer.body["backends"] == {"a": "ok", "z": "ok", "p": "invalid_reference"}


def test_an_element_that_cannot_take_its_result_is_a_failed_item() -> None:
    orders = [{"id": 1}, "two", {"id": 3}]
    result, body = settle(orders, ok(["x", "y", "z"]))
    assert result.outcome == Outcome.INVALID_REFERENCE  # on_item_error: fail
    assert result.detail == "into orders[*].p: element 1 is a string, not an object"
    assert body == {"orders": orders}
    skip = ItemResults(("x", "y", None), frozenset({2}), "skip")
    result, body = settle(orders, ok(skip))
    assert (result.outcome, failed_items(result)) == (Outcome.OK, 2)
    assert body == {"orders": [{"id": 1, "p": "x"}]}
    null = ItemResults(("x", "y", None), frozenset({2}), "null")
    result, body = settle(orders, ok(null))
    assert (result.outcome, failed_items(result)) == (Outcome.OK, 2)
    assert body == {"orders": [{"id": 1, "p": "x"}, "two", {"id": 3, "p": None}]}


def test_without_into_settling_changes_nothing() -> None:
    plan = CollectionsPlan(first_slot=1, concat_arrays=True)
    results = [ok({"k": [1]})]
    settled, build = plan.settle([place("a")], results)
    assert settled is results
    assert build([place("a")], results) == {"k": [1]}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.just({}), st.just({"q": 1}), st.integers(), st.none()), max_size=6),
    st.data(),
    st.sampled_from(["fail", "skip", "null"]),
)
def test_an_ok_into_backend_placed_every_result_or_counted_the_element_failed(
    elements: list[Any], data: st.DataObject, mode: Any
) -> None:
    n = len(elements)
    failed = frozenset(data.draw(st.sets(st.integers(0, n - 1))) if n else set())
    values = tuple(None if i in failed else f"v{i}" for i in range(n))
    value: Any = list(values) if mode == "fail" else ItemResults(values, failed, mode)
    if mode == "fail":
        failed = frozenset()
    result, body = settle(elements, ok(value))
    objects = {i for i, e in enumerate(elements) if isinstance(e, dict)}
    if result.outcome != Outcome.OK:
        assert mode == "fail" and len(objects) < n
        return
    unplaceable = set(range(n)) - objects
    assert failed_items(result) == len(failed | unplaceable)
    kept = [i for i in range(n) if not (mode == "skip" and i in failed | unplaceable)]
    assert body["orders"] == [
        {**elements[i], "p": values[i]} if i in objects else elements[i] for i in kept
    ]


# --- the whole body ------------------------------------------------------------------------


def test_the_body_is_merged_then_filled_then_shaped() -> None:
    plan = CollectionsPlan(
        first_slot=3,
        concat_arrays=True,
        into=(IntoPlan(2, ("orders",), ("product",)),),
        shape=Transform.compile(allow=["orders[*].id", "orders[*].product.name"]),
    )
    placements = [place("recent", "orders"), place("old", "orders"), place("product")]
    results = [
        ok([{"id": 1, "pid": "a"}]),
        ok([{"id": 2, "pid": "b"}]),
        ok([{"name": "A", "price": 1}, {"name": "B", "price": 2}]),
    ]
    assert plan.body(placements, results) == {
        "orders": [{"id": 1, "product": {"name": "A"}}, {"id": 2, "product": {"name": "B"}}]
    }
    assert plan.embedded == frozenset({2})


def test_a_shape_select_that_finds_nothing_is_a_502() -> None:
    plan = CollectionsPlan(first_slot=1, shape=Transform.compile(select="missing"))
    with pytest.raises(SelectMissing):
        plan.body([place("a")], [ok({"x": 1})])
    answer = aggregate([place("a")], [ok({"x": 1})], build=plan.body)
    assert answer.status == 502
    assert answer.body["error"]["code"] == "shape_select_missing"
    assert answer.body["backends"] == {"a": "ok"}
    assert ("cache-control", "no-store") in answer.headers


def test_a_shape_select_may_answer_with_something_other_than_an_object() -> None:
    plan = CollectionsPlan(first_slot=1, shape=Transform.compile(select="items[*].id"))
    answer = aggregate([place("a")], [ok({"items": [{"id": 1}, {}, {"id": 3}]})], build=plan.body)
    assert (answer.status, answer.body) == (200, [1, 3])
