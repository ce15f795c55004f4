"""Request validation against JSON Schema: ``request_schema`` and ``query_schema`` (pure).

A schema is compiled once, at load (:func:`compile_schema`); a request's JSON body or its
query parameters are then checked with :func:`check_body` and :func:`check_query`, which
raise :class:`~gateway._errors.SchemaViolation` (400 ``schema_violation``) for the first
error found, before any upstream is called.

The validator is jsonschema-rs, chosen by measurement (``bench/validator_cost.py``, figures
in ``bench/README.md``): for a cart schema of 30 keywords it compiles in 0.3 ms
(fastjsonschema 9 ms, jsonschema 11 ms) and checks a valid 5-item cart in 3 us (23 and
338 us), a 100-item one in 40 us (321 and 9224 us); it implements draft 2020-12 in full
where fastjsonschema knows drafts 4 to 7 only and silently ignores ``prefixItems``,
``dependentRequired`` and ``unevaluatedProperties``; its error paths keep array indexes as
integers (fastjsonschema's are strings); it ships an abi3 wheel for CPython 3.10 and later.
It is imported only when a config has a schema: its import adds about 3 900 objects for the
collector to walk, which a gateway without schemas should not pay for.

The rules (JSON Schema Core and Validation, draft 2020-12):

- The dialect is the schema's ``$schema`` (Core section 8.1.1), one of drafts 2020-12,
  2019-09, 7, 6 and 4, or draft 2020-12 without one. Another metaschema is refused: it
  would have to be fetched.
- The schema is checked against its metaschema at load.
- ``$ref`` is resolved within the schema document only (Core section 8.2.3: ``#/$defs/x``,
  anchors, embedded ``$id`` resources); a reference to another document is a config
  problem, so nothing is fetched or read at load or per request.
- ``format`` is asserted, and an unknown format is a config problem, as in the
  format-assertion vocabulary (Validation section 7.2.2): a misspelt format would
  otherwise let everything pass.
- A failure reports the validator's first error: where in the instance, as a JSONPath
  expression (RFC 9535) that selects exactly the failing value (:func:`json_path`); the
  schema keyword that failed (the last segment of the error's keyword location); and a
  message in which the client's values are masked (the part at fault is named, its value
  never echoed back) and which is cut to :data:`MAX_MESSAGE_CHARS`.

The query instance (:func:`query_instance`) is a JSON object with one member per
parameter: its first value as a string, or the list of all its values (strings) when the
schema's own top-level ``properties`` give that parameter a ``type`` that is or includes
``array``. That is read literally at load (:func:`array_properties`): a ``$ref`` there, or
``properties`` inside ``allOf``/``anyOf``/``oneOf``/``if``, are not followed, and their
parameters are single strings. Values are never converted: a number in a query is a
string, to be checked with ``pattern``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .._errors import SchemaViolation
from .jsonpath import json_path
from .transform import JSON

if TYPE_CHECKING:
    from jsonschema_rs import Validator

DEFAULT_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DIALECTS = frozenset(
    {
        DEFAULT_DIALECT,
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-04/schema",
    }
)
MAX_MESSAGE_CHARS = 200
MASK = "the value"  # stands for the client's value in messages: "the value is not of type ..."

Where = Literal["body", "query"]
PathSegment = str | int


class SchemaError(ValueError):
    """A schema that cannot be used; ``at`` is where inside the schema (empty: the whole).

    Args:
        message: what is wrong.
        at: the path of the offending part of the schema, as keys and indexes.
        others: every other problem its metaschema finds in the schema.
    """

    def __init__(
        self,
        message: str,
        at: tuple[PathSegment, ...] = (),
        others: tuple[SchemaError, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.at = at
        self.others = others  # more problems of the same schema, found with this one


@dataclass(frozen=True, slots=True)
class Violation:
    """The first error found in an instance: where (keys and indexes from the instance's
    root), the schema keyword that failed, and the masked message."""

    path: tuple[PathSegment, ...]
    keyword: str
    message: str

    @property
    def json_path(self) -> str:
        return json_path(self.path)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledSchema:
    """A schema ready to check instances with. ``array_properties``: for a query schema,
    the parameters whose values are checked as a list (see :func:`array_properties`)."""

    validator: Validator
    array_properties: frozenset[str] = frozenset()

    def first_violation(self, instance: JSON) -> Violation | None:
        """The first error in ``instance``, or None when it is valid."""
        if self.validator.is_valid(instance):  # the common case, without building errors
            return None
        for error in self.validator.iter_errors(instance):
            keyword = next((s for s in reversed(error.schema_path) if isinstance(s, str)), "schema")
            message = error.message
            if len(message) > MAX_MESSAGE_CHARS:
                message = message[: MAX_MESSAGE_CHARS - 3] + "..."
            return Violation(tuple(error.instance_path), keyword, message)
        return None  # pragma: no cover - is_valid said otherwise


def _refuse(uri: str) -> JSON:
    raise ValueError(f"{uri} is not fetched")


def compile_schema(schema: JSON, *, query: bool = False) -> CompiledSchema:
    """Check ``schema`` against its metaschema and compile it.

    Args:
        schema: a JSON Schema as parsed (an object, or ``true``/``false``).
        query: a ``query_schema``: also find the parameters checked as lists.

    Raises:
        SchemaError: the schema is not valid for its dialect, names another dialect,
            refers to another document, or uses an unknown ``format``.
    """
    if not isinstance(schema, dict | bool):
        raise SchemaError("a schema is a JSON object (or true or false)")
    if isinstance(schema, dict):
        dialect = schema.get("$schema")
        if isinstance(dialect, str) and dialect.rstrip("#") not in DIALECTS:
            known = ", ".join(sorted(DIALECTS))
            raise SchemaError(f"unknown $schema {dialect!r} (known: {known})", ("$schema",))
    try:
        # imported here: a gateway without schemas does not load it (see the docstring)
        import jsonschema_rs
    except ImportError:  # pragma: no cover - a dependency of the package
        raise SchemaError("schemas need the jsonschema-rs package") from None
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        raise _metaschema_errors(schema, exc) from None
    if query and isinstance(schema, dict) and "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "object" not in types:
            # the instance is always an object (see query_instance): no request could pass
            raise SchemaError(
                "the query is checked as an object of its parameters: the type must allow object",
                ("type",),
            )
    try:
        validator = jsonschema_rs.validator_for(
            schema,
            validate_formats=True,
            ignore_unknown_formats=False,
            retriever=_refuse,
            mask=MASK,
        )
    except jsonschema_rs.ValidationError as exc:
        message = exc.message.split("\n", 1)[0]
        if "retrieving it failed" in message:  # a $ref to another document
            resource = message.partition(" is not present")[0]
            message = (
                f"{resource} is another document: only references within the schema are "
                "resolved (put shared parts under $defs)"
            )
        raise SchemaError(message, tuple(exc.instance_path)) from None
    except jsonschema_rs.ReferencingError as exc:  # pragma: no cover - $schema checked above
        raise SchemaError(exc.message) from None
    return CompiledSchema(validator, array_properties(schema) if query else frozenset())


def _metaschema_errors(schema: JSON, first: Exception) -> SchemaError:
    """Every error the schema's metaschema finds (``meta.validate`` stops at the first),
    ordered by where they are."""
    import jsonschema_rs

    dialect = schema.get("$schema", DEFAULT_DIALECT) if isinstance(schema, dict) else None
    try:
        # the metaschemas of the known dialects are built in: nothing is fetched
        meta = jsonschema_rs.validator_for({"$schema": dialect, "$ref": dialect}, retriever=_refuse)
        found = [
            SchemaError(e.message.split("\n", 1)[0], tuple(e.instance_path))
            for e in meta.iter_errors(schema)
        ]
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError):
        found = []
    if not found:  # pragma: no cover - the metaschema refused the schema once already
        message = getattr(first, "message", str(first)).split("\n", 1)[0]
        return SchemaError(message, tuple(getattr(first, "instance_path", ())))
    found.sort(key=lambda e: [str(s) for s in e.at])
    return SchemaError(found[0].message, found[0].at, tuple(found[1:]))


def array_properties(schema: JSON) -> frozenset[str]:
    """The names under the schema's own top-level ``properties`` whose ``type`` is
    ``array`` or a list that includes it: the query parameters checked as the list of
    their values. Read literally (no ``$ref`` or combinator is followed)."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return frozenset()
    names = set()
    for name, sub in properties.items():
        kind = sub.get("type") if isinstance(sub, dict) else None
        if kind == "array" or (isinstance(kind, list) and "array" in kind):
            names.add(name)
    return frozenset(names)


def _text(value: str) -> str:
    # query octets that are not UTF-8 are kept as surrogates (surrogateescape); a JSON
    # string cannot hold them, so they are checked as U+FFFD
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def query_instance(
    query: Mapping[str, Sequence[str]], array_names: frozenset[str]
) -> dict[str, JSON]:
    """The JSON object a query schema checks: each parameter's first value, or the list
    of its values for ``array_names``. ``query`` lists each name's values in order."""
    return {
        _text(name): [_text(v) for v in values] if name in array_names else _text(values[0])
        for name, values in query.items()
        if values
    }


def check_body(schema: CompiledSchema, body: JSON) -> None:
    """Check a request's parsed JSON body.

    Raises:
        SchemaViolation: ``in`` ``body``, with the failing value's ``path`` and the
            ``keyword``.
    """
    violation = schema.first_violation(body)
    if violation is not None:
        raise _refusal(violation, "body")


def check_query(schema: CompiledSchema, query: Mapping[str, Sequence[str]]) -> None:
    """Check a request's query parameters (see :func:`query_instance`).

    Raises:
        SchemaViolation: ``in`` ``query``, with the failing value's ``path``, the
            ``keyword`` and, when the failure is about one parameter, its name as
            ``parameter``.
    """
    violation = schema.first_violation(query_instance(query, schema.array_properties))
    if violation is not None:
        raise _refusal(violation, "query")


def _refusal(violation: Violation, where: Where) -> SchemaViolation:
    path = violation.json_path
    fields = {"in": where, "path": path, "keyword": violation.keyword}
    if where == "query" and violation.path:
        fields["parameter"] = str(violation.path[0])
    what = "request body" if where == "body" else "query"
    return SchemaViolation(f"{what} at {path}: {violation.message}", fields=fields)
