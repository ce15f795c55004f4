"""Compiling an endpoint's ``request_schema`` and ``query_schema`` at load.

A schema is inline (a mapping in the config) or a file: JSON when its name ends in
``.json``, YAML otherwise, read at load (and on every reload), its path relative to the
config file's directory. Reading it is the only I/O; checking and compiling it is
:func:`gateway._rules.validation.compile_schema`. Every problem (an unreadable file, a
parse error, a schema its metaschema refuses, a ``$ref`` to another document, an unknown
``format``, a schema on an endpoint that cannot use it) is collected with the config
file, the path inside it and, for a schema file, the JSON Pointer (RFC 6901) inside that
file.
"""

from __future__ import annotations

import os
from typing import Any, TypedDict

import orjson

from .._errors import ConfigError, ConfigProblem
from .._rules.jsonvalue import JsonRefused, read_json
from .._rules.validation import CompiledSchema, PathSegment, SchemaError, compile_schema
from .load import format_path, parse_yaml
from .model import EndpointConfig

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class EndpointSchemas(TypedDict):
    """The schema fields of an :class:`~.plan.EndpointPlan`."""

    request_schema: CompiledSchema | None
    query_schema: CompiledSchema | None


def endpoint_schemas(
    ep: EndpointConfig, where: tuple[int | str, ...], file: str, problems: list[ConfigProblem]
) -> EndpointSchemas:
    """The compiled ``request_schema`` and ``query_schema`` of an endpoint, as keyword
    arguments of its plan (each None when not configured or not usable: a problem is then
    added to ``problems``)."""
    plans = EndpointSchemas(request_schema=None, query_schema=None)
    if ep.request_schema is not None:
        at = (*where, "request_schema")
        if ep.passthrough:
            problems.append(
                ConfigProblem(
                    file,
                    format_path(at),
                    "a passthrough endpoint streams the request body to its upstream unread; "
                    "to check it, use an aggregated endpoint whose backend has body: forward",
                )
            )
        elif ep.method not in BODY_METHODS:
            problems.append(
                ConfigProblem(
                    file,
                    format_path(at),
                    f"a {ep.method} request has no body to check: only POST, PUT and PATCH "
                    "endpoints take a request_schema",
                )
            )
        else:
            plans["request_schema"] = _compile(ep.request_schema, at, file, problems, query=False)
    if ep.query_schema is not None:
        at = (*where, "query_schema")
        plans["query_schema"] = _compile(ep.query_schema, at, file, problems, query=True)
    return plans


def _compile(
    source: str | dict[str, Any],
    at: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
    *,
    query: bool,
) -> CompiledSchema | None:
    if isinstance(source, str):
        schema_file = schema_path(file, source)
        try:
            schema = read_schema(schema_file)
        except SchemaError as exc:
            problems.append(ConfigProblem(file, format_path(at), f"{source}: {exc.message}"))
            return None
    else:
        schema = source
    try:
        return compile_schema(schema, query=query)
    except SchemaError as exc:
        for error in (exc, *exc.others):
            if isinstance(source, str):
                inside = f" at {json_pointer(error.at)}" if error.at else ""
                problems.append(
                    ConfigProblem(file, format_path(at), f"{source}{inside}: {error.message}")
                )
            else:
                problems.append(ConfigProblem(file, format_path((*at, *error.at)), error.message))
        return None


def schema_path(config_file: str, path: str) -> str:
    """Where a schema file is: ``path`` itself if absolute, else relative to the config
    file's directory (the working directory for a config that is no file, ``<config>``)."""
    if os.path.isabs(path) or config_file.startswith("<"):
        return path
    return os.path.join(os.path.dirname(config_file), path)


def read_schema(path: str) -> Any:
    """Read and parse a schema file: JSON for ``.json``, else YAML.

    Raises:
        SchemaError: the file cannot be read, is not UTF-8, or does not parse; or it has a
            name twice in one object (JSON: RFC 8259 section 4; YAML: section 3.2.1.1).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise SchemaError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.endswith(".json"):
        try:
            return read_json(data, integers=False)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"not valid JSON: {exc}") from None
        except JsonRefused as exc:
            raise SchemaError(f"at {json_pointer(exc.at)}: {exc.message}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SchemaError("the file is not UTF-8 text") from None
    try:
        return parse_yaml(text, path)
    except ConfigError as exc:
        raise SchemaError(
            "; ".join(f"at {p.path}: {p.message}" if p.path else p.message for p in exc.problems)
        ) from None


def json_pointer(at: tuple[PathSegment, ...]) -> str:
    """A JSON Pointer (RFC 6901 section 3: ``~`` as ``~0``, ``/`` as ``~1``)."""
    return "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in at)
