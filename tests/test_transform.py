"""Shaping a backend's JSON: select, allow/deny, rename (gateway._rules.transform)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._rules.transform import (
    WILDCARD,
    SelectMissing,
    Transform,
    allow_paths,
    build_tree,
    deny_paths,
    parse_path,
    project_path,
    rename_key,
    select_path,
    split_path,
)

# --- dot paths and trees -----------------------------------------------------------------


def test_split_path_splits_on_dots() -> None:
    assert split_path("data.items.0") == ("data", "items", "0")


@pytest.mark.parametrize("path", ["", ".", "a.", ".a", "a..b"])
def test_split_path_rejects_empty_segments(path: str) -> None:
    with pytest.raises(ValueError, match="segments must be non-empty"):
        split_path(path)


def test_build_tree_nests_dot_paths() -> None:
    assert build_tree(["name", "address.city", "address.zip"]) == {
        "name": None,
        "address": {"city": None, "zip": None},
    }


def test_build_tree_shorter_path_covers_longer_one_in_either_order() -> None:
    assert build_tree(["a.b", "a"]) == {"a": None}
    assert build_tree(["a", "a.b"]) == {"a": None}


# --- select ------------------------------------------------------------------------------


def test_select_takes_a_dict_key() -> None:
    assert select_path({"data": {"name": "A"}}, ("data",)) == {"name": "A"}


def test_select_follows_nested_keys() -> None:
    assert select_path({"data": {"items": [1, 2]}}, ("data", "items")) == [1, 2]


def test_select_digit_segment_indexes_a_list() -> None:
    assert select_path({"items": [{"id": 1}, {"id": 2}]}, ("items", "1")) == {"id": 2}


def test_select_digit_segment_is_a_key_on_a_dict() -> None:
    assert select_path({"0": "zero"}, ("0",)) == "zero"


def test_select_returns_falsy_values_that_are_present() -> None:
    assert select_path({"data": None}, ("data",)) is None
    assert select_path({"data": []}, ("data",)) == []


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"data": 1}, ("missing",)),
        ({"data": {"a": 1}}, ("data", "b")),
        ({"items": [1, 2]}, ("items", "2")),
        ({"items": [1, 2]}, ("items", "first")),
        ({"items": [1, 2]}, ("items", "-1")),
        ({"data": "text"}, ("data", "x")),
        ({"data": 5}, ("data", "0")),
        (None, ("data",)),
        ([], ("0",)),
    ],
)
def test_select_missing_path_raises_select_missing(value: Any, path: tuple[str, ...]) -> None:
    with pytest.raises(SelectMissing):
        select_path(value, path)


def test_select_non_ascii_digit_segment_on_a_list_raises_select_missing() -> None:
    # "\u00b2" (superscript two) passes str.isdigit() but int() refuses it; a ValueError
    # would make the fan-out report internal_error instead of invalid_response.
    with pytest.raises(SelectMissing):
        select_path(["a", "b", "c"], ("\u00b2",))


def test_select_huge_index_on_a_list_raises_select_missing() -> None:
    # int() of a >4300-digit string raises ValueError (Python's int max str digits limit).
    with pytest.raises(SelectMissing):
        select_path(["a"], ("9" * 5000,))


# --- allow ---------------------------------------------------------------------------------


def test_allow_keeps_only_listed_top_level_keys() -> None:
    value = {"name": "A", "email": "a@x", "password": "secret"}
    assert allow_paths(value, build_tree(["name", "email"])) == {"name": "A", "email": "a@x"}


def test_allow_keeps_nesting_of_a_dot_path() -> None:
    value = {"address": {"city": "L", "zip": "N"}}
    assert allow_paths(value, build_tree(["address.city"])) == {"address": {"city": "L"}}


def test_allow_skips_absent_keys() -> None:
    assert allow_paths({"a": 1}, build_tree(["a", "b", "c.d"])) == {"a": 1}


def test_allow_applies_to_each_element_of_an_array() -> None:
    value = [{"id": 1, "secret": "x"}, {"id": 2, "secret": "y"}]
    assert allow_paths(value, build_tree(["id"])) == [{"id": 1}, {"id": 2}]


def test_allow_applies_to_each_element_of_a_nested_array() -> None:
    value = {"items": [{"id": 1, "cost": 3}, {"id": 2, "cost": 4}], "total": 7}
    assert allow_paths(value, build_tree(["items.id"])) == {"items": [{"id": 1}, {"id": 2}]}


def test_allow_leaves_scalars_in_an_array_alone() -> None:
    assert allow_paths([1, {"a": 1, "b": 2}], build_tree(["a"])) == [1, {"a": 1}]


# --- deny ----------------------------------------------------------------------------------


def test_deny_removes_listed_keys() -> None:
    value = {"name": "A", "password": "secret"}
    assert deny_paths(value, build_tree(["password"])) == {"name": "A"}


def test_deny_removes_a_nested_key_and_keeps_its_siblings() -> None:
    value = {"address": {"city": "L", "zip": "N"}, "name": "A"}
    assert deny_paths(value, build_tree(["address.zip"])) == {
        "address": {"city": "L"},
        "name": "A",
    }


def test_deny_applies_to_each_element_of_an_array() -> None:
    value = {"items": [{"id": 1, "cost": 3}, {"id": 2}]}
    assert deny_paths(value, build_tree(["items.cost"])) == {"items": [{"id": 1}, {"id": 2}]}


def test_deny_of_absent_key_changes_nothing() -> None:
    assert deny_paths({"a": 1}, build_tree(["b", "a.c"])) == {"a": 1}


# --- rename --------------------------------------------------------------------------------


def test_rename_top_level_key_keeps_key_order() -> None:
    value = {"name": "A", "tier": "gold", "email": "a@x"}
    out = rename_key(value, (), "tier", "level")
    assert list(out.items()) == [("name", "A"), ("level", "gold"), ("email", "a@x")]


def test_rename_nested_dot_path() -> None:
    value = {"address": {"city": "L"}, "city": "top"}
    assert rename_key(value, ("address",), "city", "town") == {
        "address": {"town": "L"},
        "city": "top",
    }


def test_rename_applies_to_each_element_of_an_array() -> None:
    value = {"items": [{"id": 1}, {"id": 2}, {"other": 3}]}
    assert rename_key(value, ("items",), "id", "order_id") == {
        "items": [{"order_id": 1}, {"order_id": 2}, {"other": 3}]
    }


def test_rename_replaces_an_existing_target_key() -> None:
    assert rename_key({"level": 1, "tier": 2}, (), "tier", "level") == {"level": 2}


def test_rename_of_absent_key_changes_nothing() -> None:
    value = {"a": 1}
    assert rename_key(value, (), "b", "c") == {"a": 1}
    assert rename_key(value, ("x",), "a", "c") == {"a": 1}


def test_rename_to_the_same_key_changes_nothing() -> None:
    assert rename_key({"a": 1, "b": 2}, (), "a", "a") == {"a": 1, "b": 2}


# --- Transform -----------------------------------------------------------------------------


def test_transform_applies_select_then_allow_then_rename() -> None:
    transform = Transform.compile(
        select="data", allow=["name", "email", "tier"], rename={"tier": "level"}
    )
    body = {"data": {"name": "A", "email": "a@x", "tier": "gold", "password": "p"}, "meta": 1}
    assert transform.apply(body) == {"name": "A", "email": "a@x", "level": "gold"}


def test_transform_allow_paths_refer_to_the_selected_value() -> None:
    transform = Transform.compile(select="data", allow=["data"])
    assert transform.apply({"data": {"data": 1, "other": 2}}) == {"data": 1}


def test_transform_rename_runs_after_allow_so_allow_uses_the_original_name() -> None:
    transform = Transform.compile(allow=["tier"], rename={"tier": "level"})
    assert transform.apply({"tier": "gold", "x": 1}) == {"level": "gold"}


def test_transform_allow_by_new_name_does_not_keep_a_renamed_key() -> None:
    transform = Transform.compile(allow=["level"], rename={"tier": "level"})
    assert transform.apply({"tier": "gold"}) == {}


def test_transform_deny_then_rename() -> None:
    transform = Transform.compile(deny=["password"], rename={"tier": "level"})
    assert transform.apply({"tier": "gold", "password": "p"}) == {"level": "gold"}


def test_transform_select_index_then_allow_on_array_elements() -> None:
    transform = Transform.compile(select="items", allow=["id", "total"])
    body = {"items": [{"id": 1, "total": 3, "sku": "x"}, {"id": 2, "total": 4}]}
    assert transform.apply(body) == [{"id": 1, "total": 3}, {"id": 2, "total": 4}]


def test_transform_missing_select_raises_select_missing() -> None:
    with pytest.raises(SelectMissing):
        Transform.compile(select="data").apply({"other": 1})


def test_empty_transform_is_identity() -> None:
    transform = Transform.compile()
    assert transform.is_identity
    value = {"a": [1, 2]}
    assert transform.apply(value) is value


def test_transform_with_a_rename_is_not_identity() -> None:
    assert not Transform.compile(rename={"a": "b"}).is_identity


def test_transform_compile_refuses_both_allow_and_deny() -> None:
    with pytest.raises(ValueError, match="either allow or deny"):
        Transform.compile(allow=["a"], deny=["b"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"select": ""},
        {"select": "a..b"},
        {"allow": ["a", ""]},
        {"allow": ["a."]},
        {"deny": [".a"]},
        {"rename": {"a..b": "c"}},
        {"rename": {"": "c"}},
    ],
)
def test_transform_compile_refuses_bad_dot_paths(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid dot path"):
        Transform.compile(**kwargs)


@pytest.mark.parametrize("target", ["a.b", "", "."])
def test_transform_compile_refuses_a_rename_target_that_is_not_one_key(target: str) -> None:
    with pytest.raises(ValueError, match="single non-empty key"):
        Transform.compile(rename={"a": target})


def test_transform_compile_splits_rename_source_into_parent_and_key() -> None:
    transform = Transform.compile(rename={"address.city": "town"})
    assert transform.renames == ((("address",), "city", "town"),)


# --- properties ------------------------------------------------------------------------------

_KEYS = st.sampled_from(["a", "b", "c", "0", "1", "id", "name"])
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=25,
)
_PATH = st.lists(_KEYS, min_size=1, max_size=3).map(".".join)
_PATHS = st.lists(_PATH, max_size=4)


@settings(max_examples=200, deadline=None)
@given(_JSON, _PATHS)
def test_allow_paths_never_raises_or_mutates(value: Any, paths: list[str]) -> None:
    before = copy.deepcopy(value)
    allow_paths(value, build_tree(paths))
    assert value == before


@settings(max_examples=200, deadline=None)
@given(_JSON, _PATHS)
def test_deny_paths_never_raises_or_mutates(value: Any, paths: list[str]) -> None:
    before = copy.deepcopy(value)
    deny_paths(value, build_tree(paths))
    assert value == before


@settings(max_examples=200, deadline=None)
@given(_JSON, st.lists(_KEYS, max_size=3), _KEYS, _KEYS)
def test_rename_key_never_raises_or_mutates(
    value: Any, parent: list[str], old: str, new: str
) -> None:
    before = copy.deepcopy(value)
    rename_key(value, tuple(parent), old, new)
    assert value == before


@settings(max_examples=200, deadline=None)
@given(
    _JSON,
    _PATHS,
    st.booleans(),
    st.dictionaries(_PATH, _KEYS, max_size=3),
)
def test_transform_apply_without_select_never_raises_or_mutates(
    value: Any, paths: list[str], use_allow: bool, rename: dict[str, str]
) -> None:
    if use_allow:
        transform = Transform.compile(allow=paths, rename=rename)
    else:
        transform = Transform.compile(deny=paths, rename=rename)
    before = copy.deepcopy(value)
    transform.apply(value)
    assert value == before


@settings(max_examples=200, deadline=None)
@given(_JSON, _PATHS)
def test_deny_paths_is_idempotent(value: Any, paths: list[str]) -> None:
    tree = build_tree(paths)
    denied = deny_paths(value, tree)
    assert deny_paths(denied, tree) == denied


# --- [N] and [*] in paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a", ("a",)),
        ("a.b", ("a", "b")),
        ("orders[*].id", ("orders", WILDCARD, "id")),
        ("orders[0].id", ("orders", "0", "id")),
        ("[*].id", (WILDCARD, "id")),
        ("a[1][*]", ("a", "1", WILDCARD)),
        ("items.0", ("items", "0")),
    ],
)
def test_paths_read_like_references(path: str, parts: tuple[str, ...]) -> None:
    assert parse_path(path) == parts


@pytest.mark.parametrize("path", ["a[x]", "a]", "a[-1]", "a[*", "a..b", "", "a[*]b"])
def test_a_malformed_bracket_or_segment_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="invalid dot path"):
        parse_path(path)


def test_select_with_an_index_is_the_digit_segment() -> None:
    value = {"items": [{"id": 1}, {"id": 2}]}
    assert Transform.compile(select="items[1].id").apply(value) == 2
    assert Transform.compile(select="items.1.id").apply(value) == 2


def test_select_with_a_wildcard_projects_and_leaves_out_elements_without_the_rest() -> None:
    value = {"orders": [{"id": 1}, {"x": 2}, "scalar", {"id": None}]}
    assert Transform.compile(select="orders[*].id").apply(value) == [1, None]
    assert Transform.compile(select="orders[*]").apply(value) == value["orders"]
    nested = {"a": [{"b": [1, 2]}, {"b": [3]}]}
    assert project_path(nested, ("a", WILDCARD, "b", WILDCARD)) == [[1, 2], [3]]


@pytest.mark.parametrize("value", [{}, {"orders": {"id": 1}}, {"orders": "x"}, [], {"other": [1]}])
def test_a_projection_without_its_array_is_missing(value: Any) -> None:
    with pytest.raises(SelectMissing):
        Transform.compile(select="orders[*].id").apply(value)


def test_allow_deny_and_rename_read_a_wildcard_as_every_element() -> None:
    value = {"orders": [{"id": 1, "p": {"n": "a", "x": 1}}, {"id": 2, "p": {"n": "b"}}], "z": 0}
    with_wildcards = Transform.compile(
        allow=["orders[*].id", "orders[*].p.n"], rename={"orders[*].p": "product"}
    )
    without = Transform.compile(allow=["orders.id", "orders.p.n"], rename={"orders.p": "product"})
    assert with_wildcards.apply(value) == without.apply(value)
    assert with_wildcards.apply(value) == {
        "orders": [{"id": 1, "product": {"n": "a"}}, {"id": 2, "product": {"n": "b"}}]
    }
    assert Transform.compile(deny=["orders[*].p"]).apply(value) == {
        "orders": [{"id": 1}, {"id": 2}],
        "z": 0,
    }


@pytest.mark.parametrize(
    "kwargs",
    [{"allow": ["a[0].b"]}, {"deny": ["a[1]"]}, {"rename": {"a[0].b": "c"}}, {"allow": ["[*]"]}],
)
def test_allow_deny_and_rename_refuse_an_index(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid dot path"):
        Transform.compile(**kwargs)


def test_a_rename_target_with_a_bracket_is_refused() -> None:
    with pytest.raises(ValueError, match="single non-empty key"):
        Transform.compile(rename={"a": "b[*]"})


@settings(max_examples=200, deadline=None)
@given(_JSON, st.lists(st.lists(_KEYS.filter(str.isalpha), min_size=1, max_size=3), max_size=3))
def test_a_wildcard_after_any_key_changes_nothing_for_allow_and_deny(
    value: Any, paths: list[list[str]]
) -> None:
    plain = [".".join(p) for p in paths]
    starred = ["[*].".join(p) for p in paths]
    assert allow_paths(value, build_tree(plain)) == allow_paths(value, build_tree(starred))
    assert deny_paths(value, build_tree(plain)) == deny_paths(value, build_tree(starred))


@settings(max_examples=200, deadline=None)
@given(st.lists(_JSON, max_size=5), _KEYS.filter(str.isalpha))
def test_a_projection_takes_what_each_element_has(elements: list[Any], key: str) -> None:
    expected = [e[key] for e in elements if isinstance(e, dict) and key in e]
    assert project_path({"a": elements}, ("a", WILDCARD, key)) == expected
