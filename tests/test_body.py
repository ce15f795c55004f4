"""Body templates and conversions (pure): what converts, what a template renders to, and
what a template that cannot work is told at load."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from gateway._rules.body import (
    MAX_INT,
    MIN_INT,
    BodyTemplate,
    Location,
    UnresolvedAt,
    check_values,
    compile_body,
    convert,
    to_bool,
    to_float,
    to_int,
    to_str,
)
from gateway._rules.jsonpath import json_path
from gateway._rules.template import (
    Ref,
    TemplateSyntaxError,
    UnresolvedReference,
    expand,
    parse_template,
    parse_url_template,
    walk,
)

# --- conversions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, 42),
        ("42", 42),
        (42.0, 42),
        ("-7", -7),
        ("+5", 5),
        ("007", 7),
        (-0.0, 0),
        (MAX_INT, MAX_INT),
    ],
)
def test_int_converts_integers_integral_floats_and_digit_strings(value: Any, expected: int) -> None:
    result = to_int(value)
    assert result == expected and type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        42.5,
        "42.0",
        "4e2",
        "",
        " 42",
        "42 ",
        "1_000",
        "\u0664\u0662",
        "0x10",
        True,
        False,
        None,
        [],
        {},
        MAX_INT + 1,
        MIN_INT - 1,
        str(MAX_INT + 1),
        1e300,
    ],
)
def test_int_refuses_everything_else(value: Any) -> None:
    with pytest.raises(UnresolvedReference):
        to_int(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, 42.0),
        (4.5, 4.5),
        ("4.2", 4.2),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("-1.5E-3", -0.0015),
        ("+2", 2.0),
    ],
)
def test_float_converts_numbers_and_number_strings(value: Any, expected: float) -> None:
    result = to_float(value)
    assert result == expected and type(result) is float


@pytest.mark.parametrize(
    "value", ["nan", "inf", "-Infinity", "1e400", "0x10", "", "1_0", "1.2.3", True, None, [], {}]
)
def test_float_refuses_everything_else(value: Any) -> None:
    with pytest.raises(UnresolvedReference):
        to_float(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a b", "a b"), (42, "42"), (4.5, "4.5"), (True, "true"), (False, "false")],
)
def test_str_gives_strings_numbers_and_booleans_as_text(value: Any, expected: str) -> None:
    assert to_str(value) == expected


@pytest.mark.parametrize("value", [None, [], {}, [1], {"a": 1}])
def test_str_refuses_null_arrays_and_objects(value: Any) -> None:
    with pytest.raises(UnresolvedReference):
        to_str(value)


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), ("true", True), ("false", False)]
)
def test_bool_takes_booleans_and_the_two_words(value: Any, expected: bool) -> None:
    assert to_bool(value) is expected


@pytest.mark.parametrize("value", ["True", "FALSE", "1", "0", "yes", "", 1, 0, None, [], {}])
def test_bool_refuses_everything_else(value: Any) -> None:
    with pytest.raises(UnresolvedReference):
        to_bool(value)


def test_a_conversion_error_never_carries_the_value() -> None:
    for to in ("int", "float", "bool"):
        with pytest.raises(UnresolvedReference) as info:
            convert("s3cr3t", to)  # type: ignore[arg-type]
        assert "s3cr3t" not in str(info.value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(MIN_INT, MAX_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values, st.sampled_from(["int", "float", "str", "bool"]))
def test_a_conversion_of_any_json_value_converts_or_says_why(value: Any, to: str) -> None:
    try:
        result = convert(value, to)  # type: ignore[arg-type]
    except UnresolvedReference:
        return
    assert type(result).__name__ == to
    json.dumps(result)  # always a JSON value


@given(st.integers(MIN_INT, MAX_INT))
def test_int_round_trips_its_text_and_integral_floats(n: int) -> None:
    assert to_int(str(n)) == n
    if abs(n) <= 2**53:
        assert to_int(float(n)) == n


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trips_its_text(x: float) -> None:
    assert to_float(repr(x)) == x
    assert to_float(to_str(x)) == x


@given(
    st.one_of(
        st.booleans(),
        st.integers(MIN_INT, MAX_INT),
        st.floats(allow_nan=False, allow_infinity=False),
    )
)
def test_str_of_a_number_or_boolean_is_its_json_text(value: Any) -> None:
    assert json.loads(to_str(value)) == value


# --- references in templates -----------------------------------------------------------


def test_a_conversion_suffix_is_parsed_only_where_conversions_apply() -> None:
    (ref,) = parse_template("{body.count:int}", conversions=True).refs
    assert (ref.kind, ref.path, ref.convert, ref.text) == (
        "body",
        ("count",),
        "int",
        "{body.count:int}",
    )
    with pytest.raises(
        TemplateSyntaxError, match="apply in body templates and GraphQL variables only"
    ):
        parse_url_template("/x/{query.n:int}")
    with pytest.raises(TemplateSyntaxError, match="unknown conversion ':integer'"):
        parse_template("{body.count:integer}", conversions=True)
    with pytest.raises(TemplateSyntaxError, match="unknown conversion ':x'"):
        parse_template("{header.X-A:x}")
    for text in ("{body.x:int:str}", "{query.a:float:int}"):
        with pytest.raises(TemplateSyntaxError, match="one conversion at most"):
            parse_template(text, conversions=True)


def test_a_colon_stays_in_query_and_claim_names_unless_a_conversion_follows() -> None:
    (query,) = parse_template("{query.a:b}").refs
    assert (query.kind, query.name, query.convert) == ("query", "a:b", None)
    (claim,) = parse_template("{jwt.urn:role}").refs
    assert (claim.path, claim.convert) == (("urn:role",), None)
    (converted,) = parse_template("{jwt.urn:role:str}", conversions=True).refs
    assert (converted.path, converted.convert) == (("urn:role",), "str")


def test_body_references_read_the_clients_body() -> None:
    whole, part, each = parse_template("{body}{body.items[0].sku}{body.items[*].sku}").refs
    assert (whole.kind, whole.path) == ("body", ())
    assert (part.kind, part.path) == ("body", ("items", 0, "sku"))
    assert each.kind == "body" and each.has_wildcard


# --- compiling and rendering -----------------------------------------------------------


def _link(ref: Ref, at: Location) -> Ref:
    return ref


def _compile(value: Any, for_each: bool = False) -> BodyTemplate:
    template, problems = compile_body(value, _link, for_each)
    assert problems == []
    return template


def _resolver(values: dict[str, Any]) -> Any:
    def resolve(ref: Ref) -> Any:
        document = values[ref.kind]
        return expand(document, ref.path) if ref.has_wildcard else walk(document, ref.path)

    return resolve


def test_a_whole_string_reference_keeps_the_json_type() -> None:
    template = _compile(
        {
            "n": "{body.n}",
            "a": "{body.a}",
            "o": "{body.o}",
            "b": "{body.b}",
            "z": "{body.z}",
            "text": "n is {body.n}, b is {body.b}",
            "sku": "{body.items[*].sku}",
            "qty": "{body.items[*].qty:int}",
            "literal": ["{{not a ref}}", 1, None],
        }
    )
    body = {
        "n": 4.5,
        "a": [1, "x"],
        "o": {"k": True},
        "b": False,
        "z": None,
        "items": [{"sku": "a", "qty": "1"}, {"sku": "b", "qty": 2.0}],
    }
    assert template.render(_resolver({"body": body})) == {
        "n": 4.5,
        "a": [1, "x"],
        "o": {"k": True},
        "b": False,
        "z": None,
        "text": "n is 4.5, b is false",
        "sku": ["a", "b"],
        "qty": [1, 2],
        "literal": ["{not a ref}", 1, None],
    }
    assert json.loads(template.encode(_resolver({"body": body})))["qty"] == [1, 2]


def test_a_template_without_references_is_encoded_once() -> None:
    template = _compile({"a": [1, {"b": "c"}], "d": "{{x}}"})
    assert template.uses == ()
    assert template.constant == b'{"a":[1,{"b":"c"}],"d":"{x}"}'
    assert template.encode(_resolver({})) is template.constant


def test_in_a_for_each_backend_a_wildcard_is_the_value_at_the_element() -> None:
    template = _compile(
        {"sku": "{body.items[*].sku}", "label": "sku {body.items[*].sku}"}, for_each=True
    )
    assert template.render(lambda ref: "a") == {"sku": "a", "label": "sku a"}


def test_a_failure_names_the_reference_never_the_value() -> None:
    template = _compile({"n": "{body.n:int}", "t": "x{body.o}"})
    with pytest.raises(UnresolvedReference) as info:
        template.render(_resolver({"body": {"n": "s3cr3t", "o": {}}}))
    assert str(info.value).startswith("{body.n:int}: ") and "s3cr3t" not in str(info.value)
    with pytest.raises(
        UnresolvedReference, match=r"^\{body.o\}: an object cannot be part of a string"
    ):
        template.render(_resolver({"body": {"n": 1, "o": {}}}))


def test_problems_are_found_at_their_location_all_of_them() -> None:
    _, problems = compile_body(
        {"a": ["ok", "{body.x:nope}"], "b": {"c": "{unclosed"}, "d": "n={body.items[*].n}"},
        _link,
    )
    assert problems == [
        (
            ("a", 1),
            "in {body.x:nope}: unknown conversion ':nope' (use :int, :float, :str or :bool)",
        ),
        (("b", "c"), "unbalanced '{' or '}' (write {{ or }} for a literal brace)"),
        (
            ("d",),
            "{body.items[*].n} gives an array: it must be the whole string, not a part of one",
        ),
    ]


def test_link_sees_every_reference_with_its_location() -> None:
    seen: list[tuple[str, Location]] = []

    def link(ref: Ref, at: Location) -> Ref:
        seen.append((ref.text, at))
        return ref

    compile_body({"a": [{"b": "{x.y} and {z}"}], "c": "{body.n:float}"}, link)
    assert seen == [("{x.y}", ("a", 0, "b")), ("{z}", ("a", 0, "b")), ("{body.n:float}", ("c",))]


brace_free = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(MIN_INT, MAX_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text().filter(lambda s: "{" not in s and "}" not in s),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=15,
)


@given(brace_free)
def test_a_template_without_braces_renders_to_itself(value: Any) -> None:
    template = _compile(value)
    assert template.render(_resolver({})) == value
    assert json.loads(template.encode(_resolver({}))) == json.loads(json.dumps(value))


@given(
    json_values, st.dictionaries(st.text(max_size=5), st.just("{body.v}"), min_size=1, max_size=3)
)
def test_every_whole_reference_is_replaced_by_the_value_itself(
    value: Any, shape: dict[str, str]
) -> None:
    template = _compile(shape)
    assert template.render(_resolver({"body": {"v": value}})) == {k: value for k in shape}


# --- locating client values ------------------------------------------------------------


def test_a_path_in_the_body_is_a_jsonpath_with_odd_names_quoted() -> None:
    assert json_path(()) == "$"
    assert json_path(("a/b", "c~d", 0, "ok")) == "$['a/b']['c~d'][0].ok"


def _failure(document: Any, path: tuple[Any, ...], check: Any = lambda v: v) -> tuple[str, str]:
    with pytest.raises(UnresolvedAt) as info:
        check_values(document, path, check)
    return info.value.at, str(info.value)


def test_check_values_checks_every_element_and_names_where_one_fails() -> None:
    seen: list[Any] = []
    check_values({"items": [{"sku": "a"}, {"sku": "b"}]}, ("items", "*", "sku"), seen.append)
    assert seen == ["a", "b"]
    assert _failure({"items": [{"sku": "a"}, {}]}, ("items", "*", "sku")) == (
        "$.items[1].sku",
        "$.items[1].sku is missing",
    )
    assert _failure({"items": {}}, ("items", "*", "sku")) == (
        "$.items",
        "$.items: [*] needs an array",
    )
    assert _failure({"a": [1]}, ("a", 3)) == ("$.a[3]", "$.a[3] is missing")
    assert _failure({"a": {"b": 1}}, ("a", "b", "c")) == ("$.a.b.c", "$.a.b.c is missing")
    assert _failure({"n": "x"}, ("n",), to_int) == (
        "$.n",
        "$.n: cannot convert a string that is not an integer to int",
    )
    assert _failure("x", (), to_int)[0] == "$"


@given(json_values, st.lists(st.sampled_from(["a", "b", 0, 1, "*"]), max_size=4))
def test_check_values_agrees_with_walk_and_expand(document: Any, path: list[Any]) -> None:
    if path.count("*") > 1:
        return
    try:
        expected = expand(document, path) if "*" in path else [walk(document, path)]
    except UnresolvedReference:
        with pytest.raises(UnresolvedAt):
            check_values(document, path, lambda v: v)
        return
    seen: list[Any] = []
    check_values(document, path, seen.append)
    assert seen == expected


def test_conversions_are_exact_about_integral_floats() -> None:
    assert to_int(1e15) == 10**15
    assert math.isclose(to_float("1e-300"), 1e-300)


# --- the client's values: checked exactly as strictly as they are used -------------------

_SHAPED = {
    "version": 1,
    "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
    "endpoints": [
        {
            "path": "/api",
            "method": "POST",
            "backends": [
                {
                    "name": "b",
                    "upstream": "u",
                    "method": "POST",
                    "path": "/x/{body.s}",
                    "headers": {"X-H": "{body.h}"},
                    "body": {
                        "template": {
                            "n": "{body.n:int}",
                            "skus": "{body.items[*].sku}",
                            "qs": "{body.items[*].q:float}",
                            "flag": "{body.flag:bool}",
                            "text": "s={body.s} n={body.n}",
                            "o": "{body.o}",
                        }
                    },
                }
            ],
        }
    ],
}

client_scalars = (
    st.none()
    | st.booleans()
    | st.integers(MIN_INT, MAX_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "a", "..", "a/b", "42", "-7", "4.5", "1e3", "true", "false", "\n"])
    | st.text(max_size=4)
)
client_values = st.recursive(
    client_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["sku", "q", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
numberish = st.integers(-(10**6), 10**6) | st.sampled_from(["42", "-7", "4.5", "x", 2.5, True])
# mostly well-formed bodies, so that both answers are seen often (a mix of both kinds)
plausible_bodies = st.fixed_dictionaries(
    {
        "n": numberish,
        "items": st.lists(
            st.fixed_dictionaries({"sku": client_scalars, "q": numberish}), max_size=3
        ),
        "flag": st.sampled_from([True, False, "true", "false", "no", 1]),
        "s": st.sampled_from(["a", "b c", "..", "", "?", 3]),
        "o": client_values,
        "h": st.sampled_from(["v", "a\nb", 1]),
    }
)
client_bodies = st.one_of(
    plausible_bodies,
    client_values,
    st.dictionaries(st.sampled_from(["n", "items", "flag", "s", "o", "h"]), client_values),
)


@settings(max_examples=300)
@given(client_bodies)
@example(
    {"n": "3", "items": [{"sku": "a", "q": "1.5"}], "flag": "true", "s": "x", "o": [], "h": "v"}
)
def test_a_body_the_check_lets_through_always_builds_and_one_it_refuses_never_does(
    body: Any,
) -> None:
    import orjson

    from gateway import load_config
    from gateway._call.context import CallContext
    from gateway._call.request import build_request, check_client_values
    from gateway._errors import RequestError

    plan = _shaped_plan(load_config, json.dumps(_SHAPED))
    (endpoint,) = plan.endpoints
    ctx = CallContext({}, body=orjson.dumps(body), json_body=body)
    try:
        check_client_values(endpoint, ctx)
    except RequestError as exc:
        assert exc.status == 400 and exc.fields["in"] == "body"
        with pytest.raises(UnresolvedReference):
            build_request(endpoint.backends[0], ctx)
        event("refused")
        return
    event("built")
    request = build_request(endpoint.backends[0], ctx)
    sent = json.loads(request.body or b"")
    assert sent["skus"] == [item["sku"] for item in body["items"]]
    assert type(sent["n"]) is int and type(sent["flag"]) is bool


_PLANS: dict[str, Any] = {}


def _shaped_plan(load: Any, text: str) -> Any:
    if text not in _PLANS:
        _PLANS[text] = load("b.yaml", {}, text=text)
    return _PLANS[text]
