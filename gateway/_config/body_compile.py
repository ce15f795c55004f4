"""Compiling what a backend sends and what kind of call it is (at load): its JSON body
(``forward``, ``select``, a template), GraphQL backends and static backends.

Called from :func:`gateway._config.compile._compile_backend` with that function's
``link`` (which resolves a reference against the endpoint's path parameters and
backends) and ``problem`` (which records a problem at a key of the backend), so references
in a body template or GraphQL variables resolve exactly as those of a path do, and every
problem is reported at its place: a malformed or unresolvable reference at its key inside
the template (``body.template.items[0].qty``), a GraphQL syntax error with its line and
column in the query, a call setting on a static backend.

Also checked here, over every reference of the backend (path, headers and body): that a
``{body...}`` reference is on an endpoint whose method takes a JSON body (POST, PUT,
PATCH) and that is not passthrough (its body is streamed, never read); and the
``for_each`` rules: a ``for_each`` backend has a ``[*]`` reference and all of its ``[*]``
references walk one array; outside ``for_each``, a ``[*]`` in a path or a header is a
problem (one call cannot carry many values there), while in a body it gives an array.

Once every backend of the endpoint is compiled, a reference to a static backend is
checked against its value (:func:`static_ref_problems`): it is known at load, so a value
the reference would never find, convert or place safely is a config problem, not a
failure of every request.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from .._errors import ConfigProblem
from .._rules.aggregate import BackendResult, Outcome
from .._rules.body import BodyTemplate, Payload, check_values, compile_body, place
from .._rules.graphql import GraphQLPlan, check_operation
from .._rules.template import (
    WILDCARD,
    Ref,
    Template,
    UnresolvedReference,
    header_value,
    url_value,
)
from .._rules.transform import JSON, SelectMissing, Transform, split_path
from .load import format_path
from .model import BackendConfig, BodyConfig, EndpointConfig
from .plan import BackendPlan, locate_refs

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose requests carry a body the gateway reads or sends (RFC 9110 sections
9.3.1, 9.3.2 and 9.3.5: content in a GET, HEAD or DELETE request has no generally defined
semantics)."""

Key = tuple[int | str, ...]
Problem = Callable[[Key, str], None]
Link = Callable[[Ref, Key], Ref]

# What a static backend, which makes no call, cannot have.
STATIC_EXCLUDED = (
    "upstream",
    "path",
    "method",
    "timeout",
    "headers",
    "for_each",
    "max_calls",
    "body",
    "graphql",
    "follow_redirects",
    "max_redirects",
    "retries",
    "hedge",
    "circuit_breaker",
    "bulkhead",
    "cache",
    "return_headers",
)


@dataclass(frozen=True)
class RequestShape:
    """What :func:`compile_request_shape` decided for one backend."""

    method: str
    body: tuple[str, ...] | None = None  # () forwards the client's body whole
    payload: Payload | None = None
    graphql: GraphQLPlan | None = None
    static: bool = False


def compile_request_shape(
    be: BackendConfig,
    endpoint: EndpointConfig,
    params: Collection[str],
    url: Template,
    header_templates: Sequence[tuple[str, Template]],
    link: Link,
    problem: Problem,
) -> RequestShape:
    """The backend's body, GraphQL request or static answer, and the checks of all its
    references (see the module docstring). Problems are recorded with ``problem``; the
    result is then not to be used."""
    set_keys = be.model_fields_set
    if "static" in set_keys:
        for key in STATIC_EXCLUDED:
            if key in set_keys:
                problem((key,), f"a static backend makes no call: {key} does not apply")
        if endpoint.passthrough:
            problem(("static",), "a passthrough endpoint streams an upstream's answer")
        return RequestShape(be.method, static=True)

    payload: Payload | None = None
    graphql: GraphQLPlan | None = None
    body: tuple[str, ...] | None = None
    method = be.method
    if be.graphql is not None:
        graphql = _compile_graphql(be, endpoint, link, problem)
        payload, method = graphql, "POST"
    elif isinstance(be.body, BodyConfig) and "template" in be.body.model_fields_set:
        if be.body.select is not None:
            problem(("body",), "give exactly one of select and template")
        if be.method not in BODY_METHODS:
            problem(("body",), "sending a body needs POST, PUT or PATCH on the backend")
        payload = _template(be.body.template, ("body", "template"), be.for_each, link, problem)
    elif be.body is not None:
        if be.method not in BODY_METHODS or endpoint.method not in BODY_METHODS:
            problem(
                ("body",),
                "sending a body needs POST, PUT or PATCH on the endpoint and the backend",
            )
        if isinstance(be.body, BodyConfig):
            if be.body.select is None:
                problem(("body",), "give exactly one of select and template")
            else:
                try:
                    body = split_path(be.body.select)
                except ValueError as exc:
                    problem(("body", "select"), str(exc))
        else:
            body = ()

    located = locate_refs(url, header_templates, payload, graphql is not None)
    _check_body_refs(located, endpoint, params, problem)
    _check_wildcards(be.for_each, located, problem)
    return RequestShape(method, body, payload, graphql)


def _template(
    value: object, root: Key, for_each: bool, link: Link, problem: Problem
) -> BodyTemplate:
    template, found = compile_body(value, lambda ref, at: link(ref, (*root, *at)), for_each)
    for at, message in found:
        problem((*root, *at), message)
    return template


def _compile_graphql(
    be: BackendConfig, endpoint: EndpointConfig, link: Link, problem: Problem
) -> GraphQLPlan:
    assert be.graphql is not None
    if "method" in be.model_fields_set and be.method != "POST":
        problem(("method",), "a GraphQL call is a POST")
    if be.body is not None:
        problem(("body",), "a GraphQL backend sends its query and variables: not with body")
    if be.cache is not None:
        problem(("cache",), "a GraphQL call is a POST: it is not cached")
    if endpoint.passthrough:
        problem(("graphql",), "a passthrough endpoint streams an upstream's answer unchanged")
    check = check_operation(be.graphql.query, be.graphql.operation_name, be.graphql.variables)
    for message in check.problems:
        problem(("graphql", "query"), message)
    variables = _template(
        be.graphql.variables, ("graphql", "variables"), be.for_each, link, problem
    )
    return GraphQLPlan.build(be.graphql.query, be.graphql.operation_name, variables, check.warnings)


def _check_body_refs(
    located: Sequence[tuple[Key, Ref]],
    endpoint: EndpointConfig,
    params: Collection[str],
    problem: Problem,
) -> None:
    for key, ref in located:
        if ref.kind != "body":
            continue
        if not ref.path and "body" in params:
            problem(
                key,
                "{body} is the client's JSON body, not the path parameter {body}: rename the "
                "parameter",
            )
        elif endpoint.passthrough:
            problem(key, f"{ref.text}: a passthrough endpoint streams the client's body unread")
        elif endpoint.method not in BODY_METHODS:
            problem(
                key,
                f"{ref.text} reads the client's JSON body: the endpoint's method "
                f"{endpoint.method} takes none (POST, PUT or PATCH do)",
            )


def _array_of(ref: Ref) -> tuple[object, ...]:
    """What identifies the array a ``[*]`` reference walks: its source and the path to it."""
    cut = ref.path.index(WILDCARD)
    return (ref.kind, ref.name, ref.path[:cut])


def _check_wildcards(for_each: bool, located: Sequence[tuple[Key, Ref]], problem: Problem) -> None:
    walking = [(key, ref) for key, ref in located if ref.has_wildcard]
    if not for_each:
        for key, ref in walking:
            if key[0] in ("path", "headers"):
                problem(key, f"{ref.text} walks an array: set for_each: true")
                return
        return
    if not walking:
        problem(("for_each",), "needs a reference with [*], like {orders.items[*].id}")
        return
    first = walking[0][1]
    others = [ref.text for _, ref in walking if _array_of(ref) != _array_of(first)]
    if others:
        problem(
            ("for_each",),
            f"every [*] reference walks the array of {first.text} (found {', '.join(others)})",
        )


def static_result(value: object, transform: Transform, problem: Problem) -> BackendResult:
    """A static backend's result, made once: its value selected and shaped as any
    backend's result would be (``select`` that finds nothing is a config problem)."""
    try:
        selected = transform.select_value(value)
    except SelectMissing as exc:
        problem(("select",), f"the static value has no {exc.args[0]!r}")
        return BackendResult(Outcome.OK)
    return BackendResult(Outcome.OK, transform.shape(selected), selected=selected)


def static_ref_problems(
    backends: Sequence[BackendPlan],
    names: Mapping[str, int],
    where: Key,
    file: str,
    problems: list[ConfigProblem],
) -> None:
    """A reference to a static backend reads a value known at load: one that is missing,
    does not convert or is unsafe where it goes would fail every request, so it is a
    config problem (``names``: each backend's index in the config)."""
    by_name = {b.name: b for b in backends}
    for backend in backends:
        uses: list[tuple[Key, Ref, Callable[[JSON], object]]] = [
            (("path",), ref, url_value) for ref in backend.url.refs
        ]
        uses += [
            (("headers", n), ref, header_value)
            for n, t in backend.header_templates
            for ref in t.refs
        ]
        if backend.payload is not None:
            root = ("graphql", "variables") if backend.graphql is not None else ("body", "template")
            uses += [
                ((*root, *use.location), use.ref, partial(place, use.ref, sink=use.sink))
                for use in backend.payload.uses
            ]
        for key, ref, check in uses:
            target = by_name.get(ref.name) if ref.kind == "backend" else None
            if target is None or target.static is None:
                continue
            try:
                check_values(target.static.selected, ref.path, check, ROOT)
            except UnresolvedReference as exc:
                at = (*where, "backends", names[backend.name], *key)
                problems.append(
                    ConfigProblem(
                        file,
                        format_path(at),
                        f"{ref.text}: {_static_words(ref.name, exc)}",
                    )
                )


def _static_words(name: str, exc: UnresolvedReference) -> str:
    """What is wrong with a static backend's value, from :func:`check_values`' message
    (``$.a is missing``, ``$.a: cannot ...``, ``the whole value: cannot ...``)."""
    text = str(exc)
    if text.endswith(" is missing"):
        return f"static backend {name!r} has nothing at {text.removesuffix(' is missing')}"
    where, _, what = text.partition(": ")
    at = "" if where == ROOT else f" at {where}"
    return f"the value of static backend {name!r}{at}: {what}"


ROOT = "the whole value"


def graphql_warnings(
    file: str, endpoint: int, backends: Sequence[BackendPlan]
) -> list[ConfigProblem]:
    """``gateway check``'s warnings about GraphQL variables the operation does not declare."""
    return [
        ConfigProblem(
            file,
            format_path(("endpoints", endpoint, "backends", bi, "graphql", "variables")),
            f"warning: {warning}",
        )
        for bi, backend in enumerate(backends)
        if backend.graphql is not None
        for warning in backend.graphql.warnings
    ]
