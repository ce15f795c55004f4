"""Merging backend results and the status rules (gateway._rules.aggregate)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._rules.aggregate import (
    BackendResult,
    Outcome,
    Placement,
    aggregate,
    backends_header,
    error_body,
    http_outcome,
    merge,
    not_to_be_kept,
)


def place(
    name: str,
    *,
    required: bool = False,
    group: str | None = None,
    default: Any = None,
    has_default: bool = False,
) -> Placement:
    return Placement(name, required, group, has_default, default)


def ok(value: Any) -> BackendResult:
    return BackendResult(Outcome.OK, value)


def failed(outcome: str = Outcome.UNREACHABLE) -> BackendResult:
    return BackendResult(outcome)


# --- merge --------------------------------------------------------------------------------


def test_merge_puts_a_grouped_result_under_its_group() -> None:
    body = merge([place("profile", group="user")], [ok({"name": "A"})])
    assert body == {"user": {"name": "A"}}


def test_merge_follows_config_order_not_result_timing() -> None:
    placements = [place("a", group="a"), place("b", group="b")]
    fast_b = [
        BackendResult(Outcome.OK, [1], duration_s=0.9),
        BackendResult(Outcome.OK, [2], duration_s=0.1),
    ]
    assert list(merge(placements, fast_b)) == ["a", "b"]


def test_merge_two_objects_sharing_a_group_later_keys_win() -> None:
    placements = [place("a", group="user"), place("b", group="user")]
    body = merge(placements, [ok({"x": 1, "y": 1}), ok({"y": 2, "z": 2})])
    assert body == {"user": {"x": 1, "y": 2, "z": 2}}


def test_merge_shared_group_with_a_non_object_later_value_replaces() -> None:
    placements = [place("a", group="g"), place("b", group="g")]
    assert merge(placements, [ok({"x": 1}), ok([1, 2])]) == {"g": [1, 2]}


def test_merge_non_object_without_group_goes_under_backend_name() -> None:
    placements = [place("orders"), place("count"), place("nothing")]
    body = merge(placements, [ok([1, 2]), ok(3), ok(None)])
    assert body == {"orders": [1, 2], "count": 3, "nothing": None}


def test_merge_object_without_group_merges_at_top_level() -> None:
    body = merge([place("profile")], [ok({"name": "A", "email": "a@x"})])
    assert body == {"name": "A", "email": "a@x"}


def test_merge_top_level_objects_later_backend_replaces_earlier_key() -> None:
    placements = [place("first"), place("second")]
    body = merge(placements, [ok({"name": "A", "x": 1}), ok({"name": "B"})])
    assert body == {"name": "B", "x": 1}


def test_merge_top_level_object_replaces_an_earlier_grouped_key() -> None:
    placements = [place("a", group="k"), place("b")]
    assert merge(placements, [ok([1]), ok({"k": "top"})]) == {"k": "top"}


def test_merge_uses_default_for_a_failed_backend() -> None:
    placements = [place("profile"), place("orders", group="orders", default=[], has_default=True)]
    body = merge(placements, [ok({"name": "A"}), failed(Outcome.TIMEOUT)])
    assert body == {"name": "A", "orders": []}


def test_merge_default_null_counts_as_a_default() -> None:
    placements = [place("orders", group="orders", default=None, has_default=True)]
    assert merge(placements, [failed()]) == {"orders": None}


def test_merge_default_without_group_goes_under_name_when_not_an_object() -> None:
    placements = [place("orders", default=[], has_default=True)]
    assert merge(placements, [failed()]) == {"orders": []}


def test_merge_leaves_out_a_failed_backend_without_default() -> None:
    placements = [place("profile", group="profile"), place("orders", group="orders")]
    assert merge(placements, [ok({"name": "A"}), failed()]) == {"profile": {"name": "A"}}


def test_merge_ignores_the_value_of_a_failed_backend() -> None:
    placements = [place("orders", group="orders")]
    assert merge(placements, [BackendResult(Outcome.INVALID_RESPONSE, {"junk": 1})]) == {}


def test_merge_never_mutates_defaults() -> None:
    default_a = {"x": 1}
    default_b = {"y": 2}
    placements = [
        place("a", group="g", default=default_a, has_default=True),
        place("b", group="g", default=default_b, has_default=True),
        place("c", default={"z": 3}, has_default=True),
    ]
    for _ in range(2):
        body = merge(placements, [failed(), failed(), failed()])
        assert body == {"g": {"x": 1, "y": 2}, "z": 3}
    assert default_a == {"x": 1}
    assert default_b == {"y": 2}
    assert placements[2].default == {"z": 3}


def test_merge_never_mutates_results() -> None:
    values = [{"x": 1}, {"x": 2, "y": 2}, {"z": [1]}]
    before = copy.deepcopy(values)
    placements = [place("a", group="g"), place("b", group="g"), place("c")]
    merge(placements, [ok(v) for v in values])
    assert values == before


# --- aggregate status rules -----------------------------------------------------------------


def test_all_ok_is_200_and_complete() -> None:
    placements = [place("profile", required=True, group="profile"), place("orders")]
    result = aggregate(placements, [ok({"name": "A"}), ok([1])])
    assert result.status == 200
    assert result.complete is True
    assert result.body == {"profile": {"name": "A"}, "orders": [1]}


def test_optional_failure_is_200_and_incomplete() -> None:
    placements = [place("profile", required=True), place("orders", group="orders")]
    result = aggregate(placements, [ok({"name": "A"}), failed(Outcome.TIMEOUT)])
    assert result.status == 200
    assert result.complete is False
    assert result.body == {"name": "A"}


def test_required_backend_failure_is_502() -> None:
    placements = [place("profile", required=True), place("orders")]
    result = aggregate(placements, [failed(http_outcome(500)), ok([1])])
    assert result.status == 502
    assert result.complete is False
    assert result.body["error"]["code"] == "required_backend_failed"
    assert "'profile'" in result.body["error"]["message"]


def test_required_backend_timeout_is_504() -> None:
    placements = [place("profile", required=True), place("orders")]
    result = aggregate(placements, [failed(Outcome.TIMEOUT), ok([1])])
    assert result.status == 504
    assert result.body["error"]["code"] == "required_backend_failed"


def test_required_failure_body_maps_every_backend_to_its_outcome() -> None:
    placements = [place("profile", required=True), place("orders"), place("recs")]
    results = [failed(http_outcome(503)), ok([1]), failed(Outcome.CANCELLED)]
    body = aggregate(placements, results).body
    assert body["backends"] == {"profile": "http_503", "orders": "ok", "recs": "cancelled"}


def test_required_failure_wins_over_other_successes() -> None:
    placements = [place("a"), place("b", required=True)]
    assert aggregate(placements, [ok({"x": 1}), failed(Outcome.INVALID_RESPONSE)]).status == 502


def test_first_failed_required_backend_in_config_order_decides_the_status() -> None:
    placements = [place("a", required=True), place("b", required=True)]
    result = aggregate(placements, [failed(Outcome.UNREACHABLE), failed(Outcome.TIMEOUT)])
    assert result.status == 502
    assert "'a'" in result.body["error"]["message"]


def test_explicit_failed_required_index_decides_the_status() -> None:
    placements = [place("a", required=True), place("b", required=True)]
    results = [failed(Outcome.CANCELLED), failed(Outcome.TIMEOUT)]
    result = aggregate(placements, results, failed_required=1)
    assert result.status == 504
    assert "'b'" in result.body["error"]["message"]


def test_no_backend_succeeded_all_timeouts_is_504() -> None:
    placements = [place("a"), place("b")]
    result = aggregate(placements, [failed(Outcome.TIMEOUT), failed(Outcome.TIMEOUT)])
    assert result.status == 504
    assert result.complete is False
    assert result.body["error"]["code"] == "all_backends_failed"
    assert result.body["backends"] == {"a": "timeout", "b": "timeout"}


def test_no_backend_succeeded_mixed_failures_is_502() -> None:
    placements = [place("a"), place("b")]
    result = aggregate(placements, [failed(Outcome.TIMEOUT), failed(http_outcome(500))])
    assert result.status == 502
    assert result.body["error"]["code"] == "all_backends_failed"


def test_no_backend_succeeded_is_an_error_even_with_defaults() -> None:
    placements = [place("a", group="a", default=[], has_default=True)]
    result = aggregate(placements, [failed()])
    assert result.status == 502
    assert "a" not in result.body


# --- what caches downstream may keep --------------------------------------------------------


def returned(*headers: tuple[str, str]) -> BackendResult:
    return BackendResult(Outcome.OK, {}, headers=headers)


FRESH = (
    ("Cache-Control", "max-age=600"),
    ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
    ("CDN-Cache-Control", "max-age=60"),
    ("Surrogate-Control", "max-age=60"),
    ("ETag", '"v1"'),
)


def test_a_complete_answer_keeps_the_freshness_its_backends_returned() -> None:
    result = aggregate([place("a"), place("b")], [returned(*FRESH), ok({})])
    assert result.headers == FRESH


def test_an_incomplete_answer_says_no_store_and_drops_every_freshness_field() -> None:
    result = aggregate(
        [place("a"), place("b")],
        [
            returned(*FRESH, ("X-Kept", "1"), ("Cloudflare-CDN-Cache-Control", "max-age=9")),
            failed(),
        ],
    )
    # validators (ETag) and every targeted CDN field go too: they describe a backend's
    # representation, not this degraded answer
    assert result.headers == (("X-Kept", "1"), ("cache-control", "no-store"))


def test_several_backends_cache_control_combine_into_the_strictest() -> None:
    from gateway._rules.cachecontrol import combine_cache_control

    assert combine_cache_control(["private", "max-age=60"]) == "private, max-age=60"
    # a shared cache would keep the second for 30 s: s-maxage may not lift that
    assert combine_cache_control(["max-age=60, s-maxage=90", "max-age=30"]) == (
        "max-age=30, s-maxage=30"
    )
    assert combine_cache_control(["max-age=60", "s-maxage=600"]) == "max-age=60, s-maxage=60"
    assert combine_cache_control(["public, max-age=5", "public"]) == "public, max-age=5"
    assert combine_cache_control(["public", "max-age=5"]) == "max-age=5"
    assert combine_cache_control(["max-age=5", "no-store"]) == "no-store"
    assert combine_cache_control(["max-age=5", 'max-age="']) == "no-store"  # malformed
    assert combine_cache_control(["no-cache", "must-revalidate, max-age=1"]) == (
        "no-cache, must-revalidate, max-age=1"
    )
    assert combine_cache_control(["immutable", "stale-while-revalidate=9"]) == "no-store"
    merged = aggregate(
        [place("a"), place("b")],
        [
            returned(("Cache-Control", "private"), ("Set-Cookie", "a=1")),
            returned(("Cache-Control", "max-age=60"), ("Set-Cookie", "b=1")),
        ],
    )
    assert sorted(merged.headers) == [
        ("Cache-Control", "private, max-age=60"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=1"),
    ]


def test_error_answers_say_no_store() -> None:
    required = aggregate([place("a", required=True), place("b")], [failed(), returned(*FRESH)])
    nothing = aggregate([place("a")], [failed()])
    assert required.headers == nothing.headers == (("cache-control", "no-store"),)


def test_not_to_be_kept_never_duplicates_cache_control() -> None:
    headers = not_to_be_kept([("cache-control", "no-store"), ("Cache-Control", "public")])
    assert headers == (("cache-control", "no-store"),)


def test_backends_header_lists_outcomes_in_config_order() -> None:
    placements = [place("profile"), place("orders")]
    results = [ok({}), failed(Outcome.TIMEOUT)]
    assert backends_header(placements, results) == "profile=ok, orders=timeout"
    assert aggregate(placements, results).backends_header == "profile=ok, orders=timeout"


def test_backends_header_is_set_on_error_responses_too() -> None:
    placements = [place("profile", required=True), place("orders")]
    result = aggregate(placements, [failed(http_outcome(404)), ok([])])
    assert result.backends_header == "profile=http_404, orders=ok"


def test_http_outcome_names_the_status() -> None:
    assert http_outcome(503) == "http_503"


def test_error_body_without_backends_has_only_the_error() -> None:
    assert error_body("not_found", "nope") == {"error": {"code": "not_found", "message": "nope"}}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)
_outcomes = st.sampled_from(["ok", "timeout", "http_500", "skipped", "cancelled"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            _json,
            _outcomes,
            st.none() | st.sampled_from(["g", "h"]),
            st.booleans(),
            st.booleans(),
            _json,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_merge_and_aggregate_never_raise_or_mutate_on_arbitrary_json(
    rows: list[tuple[Any, str, str | None, bool, bool, Any]],
) -> None:

    placements = [
        Placement(f"b{i}", required, group, has_default, default)
        for i, (_, _, group, required, has_default, default) in enumerate(rows)
    ]
    results = [BackendResult(outcome, value) for value, outcome, *_ in rows]
    before = copy.deepcopy((placements, results))
    agg = aggregate(placements, results)
    assert agg.status in (200, 502, 504)
    assert isinstance(agg.body, dict)
    assert (placements, results) == before


def test_a_finished_call_keeps_every_field_of_its_result() -> None:
    """``_finished`` builds the final result field by field (cheaper than ``replace``): it
    must agree with ``replace`` for every field, including any added later."""
    import dataclasses

    from gateway._fanout import _finished

    values: dict[str, object] = {}
    for number, f in enumerate(dataclasses.fields(BackendResult), start=1):
        default = f.default
        if isinstance(default, bool) or not isinstance(default, (int, float, str, tuple)):
            values[f.name] = {"field": number}  # a JSON value, or bytes for raw
        elif isinstance(default, str):
            values[f.name] = f"v{number}"
        elif isinstance(default, tuple):
            values[f.name] = (("x-n", str(number)),)
        else:
            values[f.name] = type(default)(number)
    result = BackendResult(**values)  # type: ignore[arg-type]
    finished = _finished(result, 1.5, 2.5, 3, 4)
    assert finished == dataclasses.replace(
        result, duration_s=1.5, started_s=2.5, retries=3, hedges=4
    )


def test_merged_vary_names_every_backends_fields_and_one_backends_age_is_dropped() -> None:
    merged = aggregate(
        [place("a"), place("b")],
        [
            returned(("Vary", "Accept-Language"), ("Age", "100"), ("Cache-Control", "max-age=60")),
            returned(("Vary", "X-Foo, accept-language")),
        ],
    )
    assert dict(merged.headers) == {"Vary": "accept-language, x-foo", "Cache-Control": "max-age=60"}


def test_an_answer_made_of_an_unshareable_reply_says_no_store() -> None:
    private = BackendResult(Outcome.OK, {"mine": 1}, shareable=False)
    public = returned(
        ("Cache-Control", "public, max-age=600"), ("CDN-Cache-Control", "max-age=600")
    )
    merged = aggregate([place("a"), place("b")], [private, public])
    assert merged.complete
    assert merged.headers == (("cache-control", "no-store"),)
