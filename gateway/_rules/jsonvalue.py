"""JSON documents read strictly, and JSON's names for the types of values (pure).

:func:`read_json` parses a client's JSON body (and a schema file) with orjson and refuses
what orjson lets through but would change the document's meaning:

- **an object with a name twice** (RFC 8259 section 4: names SHOULD be unique; I-JSON,
  RFC 7493 section 2.3: they MUST NOT be). orjson keeps the last value silently, so a
  schema would check one value while ``body: forward`` sends the bytes with both, and the
  upstream may read the first;
- **an integer beyond 64 bits** (I-JSON, RFC 7493 section 2.2, with orjson's range: from
  ``-2**63`` to ``2**64 - 1``). orjson reads it as a float, so ``18446744073709551616``
  would arrive upstream as ``1.8446744073709552e+19``.

Neither is looked for value by value: the common body is settled by counting. A ``:``
outside strings separates a name from its value, and inside a string it is written ``:``
or ``\\u003a``. So the body's colons and escaped colons number its names plus the colons
of its strings, and orjson's encoding of what it parsed has exactly as many unless a
repeated name (with its value) was dropped by the parse. An integer beyond 64 bits has at
least 20 digits in a row, or 19 after a ``-`` (19 digits alone are below ``2**64``, so the
usual 18- and 19-digit ids do not count). Only a body that fails one of these cheap tests
is parsed again, by the standard library, to find where (for a long run of digits, only
when orjson gave a float that large): bench/README.md has the figures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

import orjson

from .jsonpath import PathSegment
from .transform import JSON

MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1
"""The integers orjson reads and writes exactly."""

# every digit as 0, "-" kept and any other byte a space: long runs of digits are then found
# by a substring search (a regex tries each digit as a start, 15 times slower on 14 KB)
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else b if b == 0x2D else 0x20 for b in range(256))
_TWENTY_DIGITS = b"0" * 20
_MINUS_NINETEEN_DIGITS = b"-" + b"0" * 19
_ESCAPED_COLON = re.compile(rb"\\u003[aA]")


class JsonRefused(ValueError):
    """A document orjson parsed but that is not kept as it was written: ``at`` is where
    (keys and indexes), ``message`` what."""

    def __init__(self, message: str, at: tuple[PathSegment, ...]) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


def json_kind(value: object) -> str:
    """What a value is, in JSON's words: ``null``, ``a boolean``, ``a number``, ``a
    string``, ``an array`` or ``an object``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list | tuple) else "an object"


def read_json(data: bytes, *, integers: bool = True) -> JSON:
    """Parse a JSON document, refusing a name twice in one object and, with
    ``integers``, an integer beyond 64 bits (see the module docstring).

    Raises:
        orjson.JSONDecodeError: not JSON (or a number too large for a float: ``1e400``).
        JsonRefused: a repeated name, or an integer orjson would not keep exactly.
    """
    try:
        value: JSON = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if integers and str(exc).startswith("number is infinity"):
            _locate(data, integers)  # an integer of 309 digits or more: say which
        raise
    suspect = False
    if integers:
        digits = data.translate(_DIGITS_ONLY)
        suspect = (
            _TWENTY_DIGITS in digits or _MINUS_NINETEEN_DIGITS in digits
        ) and _has_huge_float(value)
    if not suspect and b":" in data:
        colons = data.count(b":")
        if b"\\" in data:
            colons += len(_ESCAPED_COLON.findall(data))
        suspect = colons != orjson.dumps(value).count(b":")
    if suspect:
        _locate(data, integers)
    return value


def _has_huge_float(value: JSON) -> bool:
    """Whether a float of ``2**63`` or more (either sign) is in the parsed document: what
    orjson made of an integer beyond 64 bits (a walk costs about what the parse did; the
    parse again, ten times that)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float and abs(item) >= _HUGE:
            return True
    return False


_HUGE: Final = float(2**63)


class _Pairs(list[tuple[str, Any]]):
    """An object as its name-value pairs, in order, as written."""


def _locate(data: bytes, integers: bool) -> None:
    """Parse again, keeping every pair and every integer's text, and raise for the first
    repeated name or integer beyond 64 bits in document order (a suspicion that finds
    nothing raises nothing)."""
    try:
        document = json.loads(data, object_pairs_hook=_Pairs, parse_int=_Integer)
    except RecursionError:
        raise JsonRefused("the document is nested too deeply to be checked", ()) from None
    for at, value in _walk(document):
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for name, _ in value:
                if name in seen:
                    raise JsonRefused(
                        "a name appears twice in one object (names must be unique: "
                        "RFC 8259 section 4, RFC 7493 section 2.3)",
                        (*at, name),
                    )
                seen.add(name)
        elif integers and isinstance(value, _Integer) and not value.exact:
            raise JsonRefused(
                "an integer beyond 64 bits would not arrive exactly (RFC 7493 section 2.2)",
                at,
            )


class _Integer:
    """An integer as written (Python's int() of a very long digit string is refused)."""

    __slots__ = ("exact",)

    def __init__(self, text: str) -> None:
        digits = text.lstrip("-")
        self.exact = len(digits) <= 20 and MIN_INT <= int(text) <= MAX_INT


def _walk(document: Any) -> Iterator[tuple[tuple[PathSegment, ...], Any]]:
    """Every value with its path, in document order (without recursion: the document may
    be as deep as the parser allowed)."""
    stack: list[tuple[tuple[PathSegment, ...], Any]] = [((), document)]
    while stack:
        at, value = stack.pop()
        yield at, value
        if isinstance(value, _Pairs):
            stack.extend(((*at, name), item) for name, item in reversed(value))
        elif isinstance(value, list):
            stack.extend(((*at, i), item) for i, item in reversed(list(enumerate(value))))
