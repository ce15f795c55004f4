"""GraphQL backends: the request, the reading of a response, the check of an operation
(pure, no I/O).

A GraphQL backend POSTs ``{"query", "operationName"?, "variables"}`` as
``application/json`` (GraphQL over HTTP, "POST request" and "JSON Encoding"); its
``variables`` are a body template (:mod:`.body`). It accepts ``application/json``, so a
server answers a well-formed GraphQL response with 200 even when it carries errors (GraphQL
over HTTP, "application/json" responses); another status is ``http_<status>`` as for any
backend.

A response (GraphQL spec, October 2021, section 7.1 "Response Format") is an object with
``data``, ``errors`` or both. A non-empty ``errors`` makes the outcome ``graphql_error``
whether or not ``data`` came too (a partial result is not passed off as a whole one; the
backend's ``default`` applies); otherwise ``data`` is the result that ``select`` and the
other transforms shape. A body with neither member is not a GraphQL response
(``invalid_response``).

:func:`check_operation` parses the query with graphql-core at load, imported only then:
a config without GraphQL backends never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from .aggregate import Outcome
from .body import BodyTemplate, Resolve, Use
from .transform import JSON


@dataclass(frozen=True)
class GraphQLPlan:
    """A GraphQL backend's request: the operation (encoded once) and its variables."""

    query: str
    operation_name: str | None
    variables: BodyTemplate
    prefix: bytes  # '{"query":...,"operationName":...,"variables":'
    warnings: tuple[str, ...] = ()  # from check_operation, for `gateway check`

    @classmethod
    def build(
        cls,
        query: str,
        operation_name: str | None,
        variables: BodyTemplate,
        warnings: tuple[str, ...] = (),
    ) -> GraphQLPlan:
        head = {"query": query}
        if operation_name is not None:
            head["operationName"] = operation_name
        prefix = orjson.dumps(head)[:-1] + b',"variables":'
        return cls(query, operation_name, variables, prefix, warnings)

    @property
    def uses(self) -> tuple[Use, ...]:
        return self.variables.uses

    def encode(self, resolve: Resolve) -> bytes:
        """The request body for this request.

        Raises:
            UnresolvedReference: a variable's value is missing or does not convert.
        """
        return self.prefix + self.variables.encode(resolve) + b"}"


def read_response(value: JSON) -> tuple[str, JSON, list[JSON] | None, str]:
    """A parsed 2xx body of a GraphQL backend: ``(outcome, data, errors, detail)``.

    ``detail`` is in the gateway's words (a count, never an error's text): it goes to the
    access log, while ``errors`` is for ``debug: true`` output only.
    """
    if not isinstance(value, dict) or ("data" not in value and "errors" not in value):
        return Outcome.INVALID_RESPONSE, None, None, "not a GraphQL response (no data or errors)"
    errors = value.get("errors")
    if errors is not None and not isinstance(errors, list):
        return (
            Outcome.INVALID_RESPONSE,
            None,
            None,
            "not a GraphQL response (errors is not an array)",
        )
    if errors:
        count = len(errors)
        partial = " with partial data" if value.get("data") is not None else ""
        detail = f"{count} GraphQL error{'s' if count > 1 else ''}{partial}"
        return Outcome.GRAPHQL_ERROR, None, errors, detail
    return Outcome.OK, value.get("data"), None, ""


@dataclass(frozen=True)
class OperationCheck:
    """What :func:`check_operation` found: problems (the config cannot be used) and
    warnings (it can, but probably not as meant)."""

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def check_operation(
    query: str, operation_name: str | None, variables: Mapping[str, JSON]
) -> OperationCheck:
    """Parse ``query`` (GraphQL spec section 2, the document syntax) and check it against
    ``operation_name`` and the configured ``variables``:

    - a syntax error, with its line and column in the query;
    - no operation, several without ``operation_name``, or an ``operation_name`` the
      document does not define; a subscription (it needs a stream, not one POST);
    - a variable the operation declares as non-null without a default that ``variables``
      does not give (section 6.4.1, CoerceVariableValues: every such call fails);
    - a variable given that the operation does not declare: a warning (servers ignore it).
    """
    # imported here: a config without GraphQL backends never pays for graphql-core
    from graphql import GraphQLSyntaxError, OperationDefinitionNode, OperationType, parse
    from graphql.language import NonNullTypeNode

    try:
        document = parse(query, no_location=False)
    except GraphQLSyntaxError as exc:
        where = ""
        if exc.locations:
            first = exc.locations[0]
            where = f" at line {first.line}, column {first.column}"
        return OperationCheck((f"syntax error{where}: {exc.message}",))
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if not operations:
        return OperationCheck(("the document has no operation (query or mutation)",))
    if operation_name is None:
        if len(operations) > 1:
            return OperationCheck(
                ("the document has several operations: name one with operation_name",)
            )
        operation = operations[0]
    else:
        named = [o for o in operations if o.name is not None and o.name.value == operation_name]
        if not named:
            return OperationCheck((f"the document has no operation named {operation_name!r}",))
        operation = named[0]
    if operation.operation == OperationType.SUBSCRIPTION:
        return OperationCheck(("subscriptions are not supported (only query and mutation)",))
    declared = {v.variable.name.value: v for v in operation.variable_definitions or ()}
    problems = [
        f"${name} is declared non-null without a default: give it in variables"
        for name, definition in declared.items()
        if isinstance(definition.type, NonNullTypeNode)
        and definition.default_value is None
        and name not in variables
    ]
    warnings = [
        f"variables.{name} is not declared by the operation (servers ignore it)"
        for name in variables
        if name not in declared
    ]
    return OperationCheck(tuple(problems), tuple(warnings))
