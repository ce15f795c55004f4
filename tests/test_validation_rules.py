"""The pure core of request validation (gateway._rules.validation): compiling a schema,
the query instance, the refusal's fields, and the JSONPath (RFC 9535) of a failing value.
No sockets; property tests where the input space is large."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._call.request import check_schemas
from gateway._config.compile import load_config
from gateway._endpoint import build_context
from gateway._errors import InvalidRequestBody, SchemaViolation
from gateway._rules.validation import (
    MAX_MESSAGE_CHARS,
    SchemaError,
    array_properties,
    check_body,
    check_query,
    compile_schema,
    json_path,
    query_instance,
)

CART: dict[str, Any] = {
    "type": "object",
    "required": ["items"],
    "additionalProperties": False,
    "properties": {
        "currency": {"enum": ["EUR", "USD"]},
        "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/item"}},
    },
    "$defs": {
        "item": {
            "type": "object",
            "required": ["sku", "qty"],
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 99},
            },
        }
    },
}


def refusal(schema: dict[str, Any], body: Any) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as caught:
        check_body(compile_schema(schema), body)
    return caught.value


# --- what a refusal says ------------------------------------------------------------------


def test_a_body_failure_names_the_json_path_of_the_value_and_the_keyword() -> None:
    exc = refusal(CART, {"items": [{"sku": "ABC-0001", "qty": 1}, {"sku": "ABC-0002", "qty": 0}]})
    assert (exc.status, exc.code) == (400, "schema_violation")
    assert exc.fields == {"in": "body", "path": "$.items[1].qty", "keyword": "minimum"}
    assert exc.message.startswith("request body at $.items[1].qty: ")


def test_a_missing_member_is_reported_at_the_object_that_lacks_it() -> None:
    exc = refusal(CART, {"items": [{"qty": 2}]})
    assert exc.fields["path"] == "$.items[0]"
    assert exc.fields["keyword"] == "required"
    assert '"sku"' in exc.message  # the schema's own name for it


def test_the_clients_value_is_never_echoed() -> None:
    for body in (
        {"items": [{"sku": "s3cr3t-value", "qty": 1}]},  # pattern
        {"items": [{"sku": "ABC-0001", "qty": 7777777}]},  # maximum
        {"items": [], "currency": "s3cr3t-value"},  # minItems, enum
        "s3cr3t-value",  # type
    ):
        exc = refusal(CART, body)
        assert "s3cr3t" not in exc.message and "7777777" not in exc.message, exc.message


def test_a_long_message_is_cut() -> None:
    long_names = {f"k{i:03d}" + "x" * 40: 1 for i in range(20)}
    exc = refusal({"properties": {"a": {}}, "additionalProperties": False}, long_names)
    assert exc.fields["keyword"] == "additionalProperties"
    assert len(exc.message) <= len("request body at $: ") + MAX_MESSAGE_CHARS
    assert exc.message.endswith("...")


def test_a_valid_body_passes() -> None:
    check_body(compile_schema(CART), {"items": [{"sku": "ABC-0001", "qty": 3}], "currency": "EUR"})


def test_a_request_without_a_body_for_a_schema_is_invalid_request_body() -> None:
    plan = load_config("t.yaml", {}, text=_endpoint_config({"request_schema": CART}))
    with pytest.raises(InvalidRequestBody) as caught:
        check_schemas(plan.endpoints[0], {}, None, False)
    assert caught.value.fields == {"in": "body"}


# --- the query instance -------------------------------------------------------------------


QUERY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "limit": {"type": "string", "pattern": "^[0-9]{1,3}$"},
        "tag": {"type": "array", "maxItems": 2, "items": {"enum": ["red", "blue"]}},
        "sort": {"type": ["array", "string"]},
    },
}


def test_a_query_parameter_is_its_first_value_or_the_list_of_its_values() -> None:
    names = array_properties(QUERY)
    assert names == {"tag", "sort"}
    instance = query_instance({"limit": ["5", "6"], "tag": ["red"], "sort": ["a", "b"]}, names)
    assert instance == {"limit": "5", "tag": ["red"], "sort": ["a", "b"]}


def test_array_properties_are_read_literally_without_following_refs_or_combinators() -> None:
    schema = {
        "$defs": {"list": {"type": "array"}},
        "properties": {"a": {"$ref": "#/$defs/list"}, "b": {"type": "array"}},
        "allOf": [{"properties": {"c": {"type": "array"}}}],
    }
    assert array_properties(schema) == {"b"}
    assert array_properties(True) == frozenset()


def test_query_octets_that_are_not_utf8_are_checked_as_replacement_characters() -> None:
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")  # as parse_query keeps them
    assert query_instance({"q": [raw]}, frozenset()) == {"q": "caf\ufffd"}
    with pytest.raises(SchemaViolation):
        check_query(compile_schema({"properties": {"q": {"pattern": "^[a-z]+$"}}}), {"q": [raw]})


def test_a_query_failure_names_the_parameter_and_the_element() -> None:
    schema = compile_schema(QUERY, query=True)
    with pytest.raises(SchemaViolation) as caught:
        check_query(schema, {"tag": ["red", "green"]})
    assert caught.value.fields == {
        "in": "query",
        "path": "$.tag[1]",
        "keyword": "enum",
        "parameter": "tag",
    }
    with pytest.raises(SchemaViolation) as caught:
        check_query(schema, {"limit": ["ten"]})
    assert caught.value.fields["parameter"] == "limit"
    with pytest.raises(SchemaViolation) as caught:
        check_query(schema, {"other": ["1"]})
    assert caught.value.fields["keyword"] == "additionalProperties"
    assert "parameter" not in caught.value.fields  # the object as a whole failed
    check_query(schema, {"limit": ["10"], "tag": ["red", "blue"]})


# --- compiling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "at", "words"),
    [
        ({"type": "objekt"}, ("type",), "anyOf"),
        ({"properties": {"qty": {"minimum": "1"}}}, ("properties", "qty", "minimum"), "number"),
        ({"$schema": "https://example.test/meta"}, ("$schema",), "unknown $schema"),
        ({"$ref": "https://example.test/s.json"}, (), "only references within the schema"),
        ({"$ref": "common.json#/x"}, (), "only references within the schema"),
        ({"$ref": "#/$defs/missing"}, (), "does not exist"),
        ({"format": "emial"}, ("format",), "Unknown format"),
        ({"pattern": "(("}, ("pattern",), "regex"),
        ([1, 2], (), "a schema is a JSON object"),
    ],
)
def test_a_schema_that_cannot_be_used_is_refused_with_where_inside_it(
    schema: Any, at: tuple[str, ...], words: str
) -> None:
    with pytest.raises(SchemaError) as caught:
        compile_schema(schema)
    assert caught.value.at == at
    assert words in caught.value.message


@pytest.mark.parametrize(
    "dialect",
    [None, "http://json-schema.org/draft-07/schema#", "http://json-schema.org/draft-04/schema#"],
)
def test_every_problem_the_metaschema_finds_is_reported(dialect: str | None) -> None:
    schema: dict[str, Any] = {"type": "objekt", "properties": {"qty": {"minimum": "one"}}}
    if dialect is not None:
        schema["$schema"] = dialect
    with pytest.raises(SchemaError) as caught:
        compile_schema(schema)
    found = [(e.at, e.message) for e in (caught.value, *caught.value.others)]
    assert [at for at, _ in found] == [("properties", "qty", "minimum"), ("type",)]
    assert '"one" is not of type "number"' in found[0][1]
    assert "anyOf" in found[1][1]


@pytest.mark.parametrize(
    "dialect",
    [
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema#",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-04/schema#",
    ],
)
def test_the_five_drafts_are_known(dialect: str) -> None:
    compile_schema({"$schema": dialect, "type": "string"})


def test_without_schema_the_dialect_is_2020_12() -> None:
    schema = compile_schema({"prefixItems": [{"type": "string"}]})
    assert schema.first_violation(["a"]) is None
    assert schema.first_violation([1]) is not None  # prefixItems is 2020-12 only


def test_formats_are_asserted() -> None:
    schema = compile_schema({"format": "email"})
    assert schema.first_violation("user@example.com") is None
    violation = schema.first_violation("not an address")
    assert violation is not None and violation.keyword == "format"


# --- JSONPath -----------------------------------------------------------------------------


def test_json_path_uses_the_shorthand_where_it_can_and_brackets_elsewhere() -> None:
    assert json_path(()) == "$"
    assert json_path(("items", 0, "qty")) == "$.items[0].qty"
    assert json_path(("a b", "_x1", "1x", "")) == "$['a b']._x1['1x']['']"
    assert json_path(("it's", "back\\slash", "new\nline", "\x01")) == (
        "$['it\\'s']['back\\\\slash']['new\\nline']['\\u0001']"
    )
    assert json_path(("é",)) == "$['é']"


_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]")
_UNESCAPE = {"\\": "\\", "'": "'", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def parse_json_path(path: str) -> list[str | int]:
    """A reader of the paths json_path writes, after RFC 9535 sections 2.5.1.1 and 2.7."""
    assert path.startswith("$")
    segments: list[str | int] = []
    pos = 1
    while pos < len(path):
        match = _SEGMENT.match(path, pos)
        assert match is not None, path[pos:]
        name, index, quoted = match.groups()
        if name is not None:
            segments.append(name)
        elif index is not None:
            segments.append(int(index))
        else:
            segments.append(
                re.sub(
                    r"\\(u[0-9a-f]{4}|.)",
                    lambda m: (
                        chr(int(m.group(1)[1:], 16))
                        if len(m.group(1)) == 5
                        else _UNESCAPE[m.group(1)]
                    ),
                    quoted,
                )
            )
        pos = match.end()
    return segments


@given(st.lists(st.one_of(st.text(), st.integers(min_value=0, max_value=10**6)), max_size=6))
def test_json_path_reads_back_as_the_same_segments(segments: list[str | int]) -> None:
    assert parse_json_path(json_path(segments)) == segments


# --- properties of validation -------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
items = st.fixed_dictionaries(
    {
        "sku": st.sampled_from(["ABC-0001", "abc-1", "XYZ-9999", ""]),
        "qty": json_values | st.integers(-5, 120),
    }
)
carts = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"items": st.lists(items, max_size=4)},
        optional={"currency": st.sampled_from(["EUR", "USD", "GBP", 1])},
    ),
)


def at(instance: Any, path: tuple[str | int, ...]) -> Any:
    for segment in path:
        instance = instance[segment]
    return instance


@settings(max_examples=300)
@given(carts)
def test_a_refusal_is_given_exactly_for_invalid_instances_and_points_into_them(body: Any) -> None:
    schema = compile_schema(CART)
    violation = schema.first_violation(body)
    assert (violation is None) == jsonschema_rs.validator_for(CART).is_valid(body)
    if violation is not None:
        at(body, violation.path)  # the path names a value the instance has
        assert parse_json_path(violation.json_path) == list(violation.path)


@given(st.dictionaries(st.text(min_size=1), st.lists(st.text(), min_size=1, max_size=3)))
def test_the_query_instance_has_one_member_per_parameter(query: dict[str, list[str]]) -> None:
    instance = query_instance(query, frozenset(list(query)[:1]))
    assert len(instance) == len(query)
    check_query(compile_schema(True, query=True), query)


# --- a refused request never gets past the request's context -----------------------------


def _endpoint_config(endpoint: dict[str, Any]) -> str:
    import json

    return json.dumps(
        {
            "version": 1,
            "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
            "endpoints": [
                {
                    "path": "/cart",
                    "method": "POST",
                    "backends": [{"name": "b", "upstream": "u", "path": "/x"}],
                    **endpoint,
                }
            ],
        }
    )


SCOPE = {"type": "http", "method": "POST", "headers": [], "query_string": b"", "client": None}


@settings(max_examples=200)
@given(carts)
def test_build_context_refuses_exactly_the_bodies_that_fail_before_any_call(body: Any) -> None:
    """build_context runs before the fan-out (serve_aggregate): what it refuses is never
    sent upstream."""
    import orjson

    plan = load_config("t.yaml", {}, text=_endpoint_config({"request_schema": CART}))
    valid = jsonschema_rs.validator_for(CART).is_valid(body)
    try:
        ctx = build_context(plan.endpoints[0], {}, SCOPE, orjson.dumps(body))
    except SchemaViolation as exc:
        assert not valid
        assert exc.fields["in"] == "body"
    else:
        assert valid
        assert ctx.json_body == body


def test_a_config_without_schemas_does_not_import_the_validator() -> None:
    code = (
        "import sys, json; from gateway import load_config, create_app; "
        "text = json.dumps({'version': 1, 'upstreams': {'u': {'url': 'http://127.0.0.1:9'}},"
        " 'endpoints': [{'path': '/a', 'backends': [{'name': 'b', 'upstream': 'u', 'path': '/x'}]}]});"
        " create_app(load_config('t.yaml', {}, text=text));"
        " print('jsonschema_rs' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
