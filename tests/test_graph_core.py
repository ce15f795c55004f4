"""Dependency graphs and request conditions (gateway._rules.graph): pure unit tests."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._rules.graph import Condition, all_hold, find_cycle, skipped_by_condition

# --- find_cycle -------------------------------------------------------------------------


def test_find_cycle_of_empty_graph_is_none() -> None:
    assert find_cycle({}) is None


def test_find_cycle_of_single_node_without_deps_is_none() -> None:
    assert find_cycle({"a": []}) is None


def test_find_cycle_of_chain_is_none() -> None:
    assert find_cycle({"c": ["b"], "b": ["a"], "a": []}) is None


def test_find_cycle_of_diamond_is_none() -> None:
    assert find_cycle({"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []}) is None


def test_find_cycle_of_disconnected_nodes_is_none() -> None:
    assert find_cycle({"a": [], "b": [], "c": ["b"]}) is None


def test_find_cycle_treats_deps_without_entries_as_leaves() -> None:
    assert find_cycle({"a": ["x", "y"], "b": ["x"]}) is None


def test_find_cycle_reports_self_loop() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_find_cycle_reports_self_loop_reached_through_another_node() -> None:
    assert find_cycle({"a": ["b"], "b": ["b"]}) == ["b", "b"]


def test_find_cycle_reports_two_cycle_as_closed_path() -> None:
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def test_find_cycle_reports_three_cycle_from_first_node_of_mapping() -> None:
    assert find_cycle({"a": ["c"], "b": ["a"], "c": ["b"]}) == ["a", "c", "b", "a"]


def test_find_cycle_start_follows_mapping_order() -> None:
    assert find_cycle({"b": ["a"], "a": ["c"], "c": ["b"]}) == ["b", "a", "c", "b"]


def test_find_cycle_leaves_out_the_path_leading_to_the_cycle() -> None:
    assert find_cycle({"x": ["a"], "a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def test_find_cycle_finds_cycle_after_acyclic_part() -> None:
    assert find_cycle({"a": [], "b": ["a"], "c": ["d"], "d": ["c"]}) == ["c", "d", "c"]


def test_find_cycle_does_not_report_a_shared_dependency_twice_as_cycle() -> None:
    # b is reached from a and again from c after it is done: not a cycle.
    assert find_cycle({"a": ["b"], "c": ["b", "a"], "b": []}) is None


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]]]:
    """Random DAGs: node i depends only on lower indexes; entries in random order; nodes
    without dependencies sometimes have no entry at all."""
    n = draw(st.integers(min_value=1, max_value=9))
    names = [f"n{i}" for i in range(n)]
    deps: dict[str, list[str]] = {}
    for i in draw(st.permutations(range(n))):
        targets = draw(st.lists(st.integers(0, i - 1), unique=True)) if i else []
        if targets or draw(st.booleans()):
            deps[names[i]] = [names[t] for t in targets]
    return names, deps


@settings(max_examples=200, deadline=None)
@given(dags())
def test_find_cycle_of_random_dag_is_none(graph: tuple[list[str], dict[str, list[str]]]) -> None:
    _, deps = graph
    assert find_cycle(deps) is None


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_find_cycle_after_adding_back_edge_reports_a_real_cycle(
    graph: tuple[list[str], dict[str, list[str]]], data: st.DataObject
) -> None:
    names, deps = graph
    # An existing path, from a higher node down its edges to a lower one.
    current = data.draw(st.sampled_from(names))
    path = [current]
    while deps.get(current) and data.draw(st.booleans()):
        current = data.draw(st.sampled_from(deps[current]))
        path.append(current)
    highest, lowest = path[0], path[-1]
    cyclic = {name: list(targets) for name, targets in deps.items()}
    cyclic.setdefault(lowest, []).append(highest)

    cycle = find_cycle(cyclic)

    assert cycle is not None
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    assert all(b in cyclic.get(a, ()) for a, b in itertools.pairwise(cycle))
    assert len(set(cycle[:-1])) == len(cycle) - 1  # a simple cycle


# --- skipped_by_condition ---------------------------------------------------------------


def test_skipped_by_condition_of_no_backends_is_empty() -> None:
    assert skipped_by_condition([], []) == []


def test_skipped_by_condition_skips_nothing_when_all_hold() -> None:
    assert skipped_by_condition([[], [0], [0, 1]], [True, True, True]) == [False, False, False]


def test_skipped_by_condition_skips_node_whose_condition_fails() -> None:
    assert skipped_by_condition([[], []], [False, True]) == [True, False]


def test_skipped_by_condition_skips_every_transitive_dependent() -> None:
    assert skipped_by_condition([[], [0], [1], [2]], [False, True, True, True]) == [
        True,
        True,
        True,
        True,
    ]


def test_skipped_by_condition_does_not_skip_independent_nodes() -> None:
    deps = [[], [0], [], [2]]
    assert skipped_by_condition(deps, [False, True, True, True]) == [True, True, False, False]


def test_skipped_by_condition_does_not_skip_the_dependency_of_a_failing_node() -> None:
    assert skipped_by_condition([[], [0]], [True, False]) == [False, True]


def test_skipped_by_condition_in_diamond_skips_join_but_not_other_branch() -> None:
    deps = [[], [0], [0], [1, 2]]
    assert skipped_by_condition(deps, [True, False, True, True]) == [False, True, False, True]


def test_skipped_by_condition_follows_deps_to_later_indexes() -> None:
    assert skipped_by_condition([[1], [2], []], [True, True, False]) == [True, True, True]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_skipped_by_condition_is_failing_or_depending_on_a_skipped_node(
    data: st.DataObject,
) -> None:
    n = data.draw(st.integers(min_value=0, max_value=10))
    deps = [data.draw(st.lists(st.integers(0, i - 1), unique=True)) if i else [] for i in range(n)]
    holds = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    skipped = skipped_by_condition(deps, holds)
    assert skipped == [not holds[i] or any(skipped[d] for d in deps[i]) for i in range(n)]


# --- Condition / all_hold ---------------------------------------------------------------


def test_query_presence_holds_when_parameter_is_given() -> None:
    assert Condition("query", "beta").holds({"beta": ["1"]}, {})


def test_query_presence_holds_for_an_empty_value() -> None:
    assert Condition("query", "beta").holds({"beta": [""]}, {})


def test_query_presence_fails_when_parameter_is_missing() -> None:
    assert not Condition("query", "beta").holds({"other": ["1"]}, {})


def test_query_presence_fails_for_an_empty_value_list() -> None:
    assert not Condition("query", "beta").holds({"beta": []}, {})


def test_query_name_is_case_sensitive() -> None:
    assert not Condition("query", "beta").holds({"Beta": ["1"]}, {})


def test_equals_holds_for_equal_value() -> None:
    assert Condition("query", "include", equals="loyalty").holds({"include": ["loyalty"]}, {})


def test_equals_fails_for_different_value() -> None:
    assert not Condition("query", "include", equals="loyalty").holds({"include": ["Loyalty"]}, {})


def test_equals_fails_when_value_is_missing() -> None:
    assert not Condition("query", "include", equals="loyalty").holds({}, {})


def test_query_condition_uses_the_first_value() -> None:
    cond = Condition("query", "include", equals="loyalty")
    assert cond.holds({"include": ["loyalty", "other"]}, {})
    assert not cond.holds({"include": ["other", "loyalty"]}, {})


def test_one_of_holds_for_a_listed_value() -> None:
    cond = Condition("header", "x-tier", one_of=frozenset({"gold", "silver"}))
    assert cond.holds({}, {"x-tier": "silver"})


def test_one_of_fails_for_an_unlisted_value() -> None:
    cond = Condition("header", "x-tier", one_of=frozenset({"gold", "silver"}))
    assert not cond.holds({}, {"x-tier": "bronze"})


def test_one_of_fails_when_value_is_missing() -> None:
    cond = Condition("header", "x-tier", one_of=frozenset({"gold"}))
    assert not cond.holds({}, {})


def test_empty_one_of_never_holds() -> None:
    assert not Condition("query", "q", one_of=frozenset()).holds({"q": ["x"]}, {})


def test_header_presence_holds_when_header_is_given() -> None:
    assert Condition("header", "x-beta").holds({}, {"x-beta": ""})


def test_header_condition_matches_lower_case_header_names() -> None:
    assert Condition("header", "x-tier", equals="gold").holds({}, {"x-tier": "gold"})


def test_header_condition_expects_its_name_lower_case() -> None:
    # The plan lower-cases names; a mixed-case name does not match the lower-case headers.
    assert not Condition("header", "X-Tier").holds({}, {"x-tier": "gold"})


def test_header_condition_ignores_query_parameters() -> None:
    assert not Condition("header", "x-tier").holds({"x-tier": ["gold"]}, {})


def test_query_condition_ignores_headers() -> None:
    assert not Condition("query", "tier").holds({}, {"tier": "gold"})


def test_all_hold_of_no_conditions_is_true() -> None:
    assert all_hold([], {}, {})


def test_all_hold_when_every_condition_holds() -> None:
    conditions = [Condition("query", "a"), Condition("header", "b", equals="1")]
    assert all_hold(conditions, {"a": ["x"]}, {"b": "1"})


def test_all_hold_fails_when_one_condition_fails() -> None:
    conditions = [Condition("query", "a"), Condition("header", "b", equals="1")]
    assert not all_hold(conditions, {"a": ["x"]}, {"b": "2"})


def test_describe_presence() -> None:
    assert Condition("query", "beta").describe() == "query.beta"


def test_describe_equals() -> None:
    assert Condition("query", "include", equals="loyalty").describe() == "query.include == loyalty"


def test_describe_one_of_lists_values_sorted() -> None:
    cond = Condition("header", "x-tier", one_of=frozenset({"b", "a"}))
    assert cond.describe() == "header.x-tier in [a, b]"
