"""Reading a JSON document strictly (gateway._rules.jsonvalue): what orjson parses is kept,
but a name twice in one object or an integer beyond 64 bits is refused at its path."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._rules.jsonvalue import MAX_INT, MIN_INT, JsonRefused, json_kind, read_json

TEXT = st.text(alphabet=st.sampled_from('ab:"\\{}[],é 0123456789'), max_size=6)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(MIN_INT, MAX_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
DOCS = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def objects(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of the non-empty objects in ``value``."""
    if isinstance(value, dict):
        own = [at] if value else []
        return own + [p for k, v in value.items() for p in objects(v, (*at, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in objects(v, (*at, i))]
    return []


def dumps(value: Any, twice: tuple[Any, ...] | None = None, at: tuple[Any, ...] = ()) -> str:
    """JSON text with spaces, and with the first name of the object at ``twice`` written
    twice (its first value 0)."""
    if isinstance(value, dict):
        pairs = [f"{json.dumps(k)} : {dumps(v, twice, (*at, k))}" for k, v in value.items()]
        if at == twice:
            pairs.insert(0, f"{json.dumps(next(iter(value)))}: 0")
        return "{" + " , ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v, twice, (*at, i)) for i, v in enumerate(value)) + "]"
    return json.dumps(value)


@settings(max_examples=400, deadline=None)
@given(DOCS)
def test_a_document_with_unique_names_and_64_bit_integers_reads_as_orjson_reads_it(
    doc: Any,
) -> None:
    for text in (dumps(doc).encode(), orjson.dumps(doc), json.dumps(doc).encode()):
        assert read_json(text) == orjson.loads(text)


@settings(max_examples=400, deadline=None)
@given(DOCS.filter(lambda d: bool(objects(d))), st.data())
def test_a_name_twice_is_refused_wherever_it_is(doc: Any, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(objects(doc)))
    first = next(iter(_at(doc, target)))
    with pytest.raises(JsonRefused) as caught:
        read_json(dumps(doc, target).encode())
    assert caught.value.at == (*target, first)
    assert "twice" in caught.value.message


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for seg in path:
        doc = doc[seg]
    return doc


@pytest.mark.parametrize("number", [MAX_INT + 1, MIN_INT - 1, 10**30, -(10**400)])
def test_an_integer_beyond_64_bits_is_refused_at_its_path(number: int) -> None:
    text = f'{{"a": [1, {{"n": {number}}}], "b": "{number}"}}'.encode()
    with pytest.raises(JsonRefused) as caught:
        read_json(text)
    assert caught.value.at == ("a", 1, "n")
    if abs(number) < 10**300:  # else orjson refuses it: too large even for a float
        # a schema file may hold any such integer: only names are checked there
        assert read_json(text, integers=False)["b"] == str(number)


def test_long_digit_runs_that_are_not_big_integers_are_kept() -> None:
    text = b'{"n": 9223372036854775807, "f": 0.12345678901234567890123, "s": "12345678901234567890123"}'
    assert read_json(text) == orjson.loads(text)


def test_a_colon_written_as_an_escape_does_not_hide_a_name_twice() -> None:
    # one colon fewer in the text than in the re-encoding: the counts alone would agree
    assert read_json(b'{"a": "\\u003a", "b": 1}') == {"a": ":", "b": 1}
    with pytest.raises(JsonRefused) as caught:
        read_json(b'{"a": "\\u003a\\u003A", "b": 1, "b": 2}')
    assert caught.value.at == ("b",)


def test_json_kinds_are_json_words() -> None:
    kinds = [json_kind(v) for v in (None, True, 1, 1.5, "s", [], {})]
    assert kinds == [
        "null",
        "a boolean",
        "a number",
        "a number",
        "a string",
        "an array",
        "an object",
    ]
