"""JSON body templates and the conversions of referenced values (pure, no I/O).

A body template is any JSON value (``body: {template: ...}``, a GraphQL backend's
``variables``) compiled once, at load, into a tree of frozen nodes. Each string in it is
one of three kinds:

- **exactly one reference** (``"{body.count}"``): replaced by the referenced value with its
  JSON type: a number stays a number, an array an array, an object an object, a boolean a
  boolean. A ``[*]`` reference gives the array of the values at every element
  (``"{body.items[*].sku}"`` -> ``["a", "b"]``), or, in a ``for_each`` backend, the value
  at the element of this call;
- **text with references** (``"order {orders.id} of {user}"``): a string, each value as
  text (strings as they are; numbers and booleans in their JSON form; ``null``, arrays and
  objects cannot be part of a string);
- **no reference**: kept as it is (``{{`` and ``}}`` are literal braces).

Object keys are literal. Parts without references are built once and shared; a template
without any reference is encoded once.

A reference may end in a conversion (:func:`convert`), applied before the value is placed;
with ``[*]`` it applies to each value:

================  ==========================================================================
``:int``          an integer as it is; a float without a fractional part (``42.0`` -> 42);
                  a string of ASCII digits with an optional sign (``"42"``, ``"-7"``,
                  ``"007"``). Anything else fails: ``42.5``, ``"42.0"``, ``"4e2"``, a
                  boolean, ``null``. The result must fit in 64 bits.
``:float``        a number as a float (``42`` -> ``42.0``); a string in JSON's number form
                  with an optional ``+`` or leading dot or zeros (``"4.2"``, ``"1e3"``,
                  ``".5"``). Not ``"nan"``, ``"inf"``, a boolean or ``null``; never
                  infinite.
``:str``          a string as it is; a number or a boolean as its JSON text (``42`` ->
                  ``"42"``, ``true`` -> ``"true"``). Not ``null``, an array or an object.
``:bool``         a boolean as it is; the strings ``"true"`` and ``"false"`` exactly.
                  Nothing else: not ``1``, ``"1"``, ``"yes"`` or ``"True"``.
================  ==========================================================================

A value that is missing or does not convert raises :class:`UnresolvedReference`, whose
message names the reference and says what is wrong, never the value (it goes to logs).
Where the value came from decides what that means: the caller checks the client's values
before any upstream is called (a 400), and a value from an upstream fails the backend
(outcome ``invalid_reference``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn, Protocol, TypeAlias

import orjson

from .jsonpath import json_path
from .jsonvalue import MAX_INT, MIN_INT, json_kind
from .template import (
    WILDCARD,
    Conversion,
    Ref,
    Segment,
    UnresolvedReference,
    parse_template,
    walk,
)
from .transform import JSON
from .urls import TemplateError

_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_NUMBER_TEXT = 400  # longer digit strings are not numbers a client means

Resolve: TypeAlias = Callable[[Ref], JSON]
"""A reference's raw value for this request (for a ``[*]`` reference outside
``for_each``: the list of the values at every element)."""

Location: TypeAlias = tuple[int | str, ...]
"""Where in the template a string is: keys and indexes from its root."""

Sink = Literal["json", "text"]
"""How a reference is used: as a whole JSON value, or as text inside a string."""


def to_int(value: JSON) -> int:
    """See the module docstring.

    Raises:
        UnresolvedReference: the value does not convert.
    """
    kind = type(value)  # parsed JSON: exact types (a bool is not an int here)
    result: int
    if kind is int:
        result = value
    elif kind is str:
        if len(value) > _MAX_NUMBER_TEXT or not _INT_TEXT.fullmatch(value):
            raise UnresolvedReference("cannot convert a string that is not an integer to int")
        result = int(value)
    elif kind is float:
        if not value.is_integer():
            raise UnresolvedReference("cannot convert a number with a fractional part to int")
        result = int(value)
    else:
        raise UnresolvedReference(f"cannot convert {json_kind(value)} to int")
    if not MIN_INT <= result <= MAX_INT:
        raise UnresolvedReference("the integer does not fit in 64 bits")
    return result


def to_float(value: JSON) -> float:
    """See the module docstring.

    Raises:
        UnresolvedReference: the value does not convert.
    """
    if isinstance(value, bool):
        raise UnresolvedReference("cannot convert a boolean to float")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        if len(value) > _MAX_NUMBER_TEXT or not _FLOAT_TEXT.fullmatch(value):
            raise UnresolvedReference("cannot convert a string that is not a number to float")
        result = float(value)
    else:
        raise UnresolvedReference(f"cannot convert {json_kind(value)} to float")
    if not math.isfinite(result):
        raise UnresolvedReference("the number is too large for a float")
    return result


def to_str(value: JSON) -> str:
    """See the module docstring.

    Raises:
        UnresolvedReference: the value does not convert.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode("ascii")
    raise UnresolvedReference(f"cannot convert {json_kind(value)} to str")


def to_bool(value: JSON) -> bool:
    """See the module docstring.

    Raises:
        UnresolvedReference: the value does not convert.
    """
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    if isinstance(value, str):
        raise UnresolvedReference("cannot convert a string other than true or false to bool")
    raise UnresolvedReference(f"cannot convert {json_kind(value)} to bool")


CONVERTERS: dict[Conversion, Callable[[JSON], JSON]] = {
    "int": to_int,
    "float": to_float,
    "str": to_str,
    "bool": to_bool,
}


def convert(value: JSON, to: Conversion | None) -> JSON:
    """``value`` converted (see the module docstring); unchanged without a conversion.

    Raises:
        UnresolvedReference: the value does not convert.
    """
    return value if to is None else CONVERTERS[to](value)


def text_of(value: JSON) -> str:
    """A value as part of a string: a string as it is, a number or a boolean as its JSON
    text.

    Raises:
        UnresolvedReference: ``null``, an array or an object.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode("ascii")
    raise UnresolvedReference(f"{json_kind(value)} cannot be part of a string")


def place(ref: Ref, value: JSON, sink: Sink) -> JSON:
    """One value as the template uses it: converted, and as text for a ``text`` sink (a
    ``[*]`` outside ``for_each`` places each of its values so).

    Raises:
        UnresolvedReference: the value does not convert, or cannot be text.
    """
    value = convert(value, ref.convert)
    return text_of(value) if sink == "text" else value


# --- the compiled tree ---------------------------------------------------------------


class Node(Protocol):
    def render(self, resolve: Resolve) -> JSON: ...


@dataclass(frozen=True, slots=True)
class Const:
    """A part without references: the same value every time (never mutated)."""

    value: JSON

    def render(self, resolve: Resolve) -> JSON:
        return self.value


@dataclass(frozen=True, slots=True)
class Whole:
    """A string that is exactly one reference: the value with its JSON type."""

    ref: Ref
    each: bool = False  # a [*] outside for_each: the list of values
    conv: Callable[[JSON], JSON] | None = None  # the ref's conversion, looked up once

    def render(self, resolve: Resolve) -> JSON:
        try:
            value = resolve(self.ref)
            conv = self.conv
            if conv is None:
                return value
            if self.each:
                if not isinstance(value, list):  # the resolver gives a list for such a ref
                    raise UnresolvedReference("[*] needs an array")
                return [conv(item) for item in value]
            return conv(value)
        except UnresolvedReference as exc:
            raise UnresolvedReference(f"{self.ref.text}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Text:
    """A string mixing literal text and references."""

    parts: tuple[str | Ref, ...]

    def render(self, resolve: Resolve) -> JSON:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                value = resolve(part)
                if part.convert is not None:
                    value = CONVERTERS[part.convert](value)
                out.append(value if isinstance(value, str) else text_of(value))
            except UnresolvedReference as exc:
                raise UnresolvedReference(f"{part.text}: {exc}") from None
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Obj:
    keys: tuple[str, ...]
    nodes: tuple[Node, ...]

    def render(self, resolve: Resolve) -> JSON:
        return {k: n.render(resolve) for k, n in zip(self.keys, self.nodes, strict=True)}


@dataclass(frozen=True, slots=True)
class Arr:
    nodes: tuple[Node, ...]

    def render(self, resolve: Resolve) -> JSON:
        return [n.render(resolve) for n in self.nodes]


@dataclass(frozen=True, slots=True)
class Use:
    """One reference of a template: where it is, and how it is used."""

    location: Location
    ref: Ref
    sink: Sink


@dataclass(frozen=True)
class BodyTemplate:
    """A compiled body template (see the module docstring)."""

    root: Node
    uses: tuple[Use, ...]
    constant: bytes | None = None  # the encoded body, when it references nothing

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(use.ref for use in self.uses)

    def render(self, resolve: Resolve) -> JSON:
        """The value for this request.

        Raises:
            UnresolvedReference: a value is missing or does not convert; the message names
                the reference.
        """
        return self.root.render(resolve)

    def encode(self, resolve: Resolve) -> bytes:
        """The JSON body for this request.

        Raises:
            UnresolvedReference: see :meth:`render`.
        """
        if self.constant is not None:
            return self.constant
        return orjson.dumps(self.root.render(resolve))


class Payload(Protocol):
    """A JSON body built for each call: a body template, or a GraphQL request."""

    @property
    def uses(self) -> tuple[Use, ...]: ...

    def encode(self, resolve: Resolve) -> bytes: ...


Link: TypeAlias = Callable[[Ref, Location], Ref]
"""Resolves a parsed reference against the endpoint (path parameters, backends), at its
location; reports what it cannot resolve itself."""


def compile_body(
    value: JSON, link: Link, for_each: bool = False
) -> tuple[BodyTemplate, list[tuple[Location, str]]]:
    """Compile a template (any JSON value). ``link`` resolves each reference;
    ``for_each``: a ``[*]`` reference is the value at this call's element.

    Returns the template and the problems found, each at its location (every one, not the
    first); with problems, the template is not to be used.
    """
    problems: list[tuple[Location, str]] = []
    uses: list[Use] = []

    def build(item: JSON, at: Location) -> Node:
        if isinstance(item, dict):
            keys = tuple(item)
            nodes = tuple(build(item[k], (*at, k)) for k in keys)
            consts = [n for n in nodes if isinstance(n, Const)]
            if len(consts) == len(nodes):  # built once (literal braces unescaped), shared
                return Const({k: c.value for k, c in zip(keys, consts, strict=True)})
            return Obj(keys, nodes)
        if isinstance(item, list):
            nodes = tuple(build(v, (*at, i)) for i, v in enumerate(item))
            consts = [n for n in nodes if isinstance(n, Const)]
            if len(consts) == len(nodes):
                return Const([c.value for c in consts])
            return Arr(nodes)
        if not isinstance(item, str) or ("{" not in item and "}" not in item):
            return Const(item)
        try:
            parsed = parse_template(item, conversions=True)
        except TemplateError as exc:
            problems.append((at, str(exc)))
            return Const(None)
        parts = tuple(link(p, at) if isinstance(p, Ref) else p for p in parsed.parts)
        if len(parts) == 1 and isinstance(parts[0], Ref):
            ref = parts[0]
            each = ref.has_wildcard and not for_each
            uses.append(Use(at, ref, "json"))
            return Whole(ref, each, CONVERTERS[ref.convert] if ref.convert else None)
        refs = [p for p in parts if isinstance(p, Ref)]
        if not refs:
            return Const("".join(p for p in parts if isinstance(p, str)))
        for ref in refs:
            if ref.has_wildcard and not for_each:
                problems.append(
                    (
                        at,
                        f"{ref.text} gives an array: it must be the whole string, not a part "
                        "of one",
                    )
                )
            uses.append(Use(at, ref, "text"))
        return Text(parts)

    root = build(value, ())
    constant = orjson.dumps(root.value) if isinstance(root, Const) else None
    return BodyTemplate(root, tuple(uses), constant), problems


# --- client values, located ----------------------------------------------------------


def check_values(
    document: JSON,
    path: Sequence[Segment],
    check: Callable[[JSON], object],
    root: str = "the body",
) -> None:
    """Apply ``check`` to the value at ``path`` (with a ``[*]``: at every element). Where
    is computed only for a failure: the check runs when each request arrives. ``root``
    names the whole document in a message.

    Raises:
        UnresolvedAt: a key or index is missing, the ``[*]`` does not meet an array, or
            ``check`` raised (its message kept); ``at`` is the JSONPath of the value.
    """
    if WILDCARD not in path:
        try:
            value = walk(document, path)
        except UnresolvedReference:
            _missing(document, path, ())
        _checked(check, value, path, root)
        return
    cut = list(path).index(WILDCARD)
    head, tail = tuple(path[:cut]), tuple(path[cut + 1 :])
    try:
        array = walk(document, head)
    except UnresolvedReference:
        _missing(document, head, ())
    if not isinstance(array, list):
        raise UnresolvedAt(json_path(head), f"{json_path(head)}: [*] needs an array")
    for i, item in enumerate(array):
        try:
            value = walk(item, tail)
        except UnresolvedReference:
            _missing(item, tail, (*head, i))
        _checked(check, value, (*head, i, *tail), root)


def _checked(
    check: Callable[[JSON], object], value: JSON, path: Sequence[Segment], root: str
) -> None:
    try:
        check(value)
    except UnresolvedReference as exc:
        at = json_path(path)
        raise UnresolvedAt(at, f"{at if path else root}: {exc}") from None


class UnresolvedAt(UnresolvedReference):
    """A value of a document is missing or unusable: ``at`` is the JSONPath of where
    it is (or should be)."""

    def __init__(self, at: str, message: str) -> None:
        super().__init__(message)
        self.at = at


def _missing(value: JSON, path: Sequence[Segment], before: tuple[Segment, ...]) -> NoReturn:
    """Raise for the first segment of ``path`` that ``value`` lacks."""
    for i, seg in enumerate(path):
        if isinstance(seg, int) and isinstance(value, list) and seg < len(value):
            value = value[seg]
        elif isinstance(value, dict) and str(seg) in value:
            value = value[str(seg)]
        else:
            at = json_path((*before, *path[: i + 1]))
            raise UnresolvedAt(at, f"{at} is missing")
    raise AssertionError("the path was there")
