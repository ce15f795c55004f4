"""GraphQL backends: the request a GraphQL server gets, what each kind of response comes
to, and what `gateway check` says about an operation."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import pytest
import trio
import trio.testing
from conftest import recorder, start_gateway, start_upstream
from upstream import RecordedRequest, Reply

from gateway import ConfigError, load_config
from gateway._rules.aggregate import Outcome
from gateway._rules.body import compile_body
from gateway._rules.graphql import GraphQLPlan, check_operation, read_response

QUERY = "query($ids: [ID!], $first: Int) { stock(ids: $ids, first: $first) { id available } }"

# --- reading a response (pure) -----------------------------------------------------------


def test_data_alone_is_the_result() -> None:
    assert read_response({"data": {"a": 1}}) == (Outcome.OK, {"a": 1}, None, "")
    assert read_response({"data": {"a": 1}, "errors": []})[0] == Outcome.OK
    assert read_response({"data": None})[:2] == (Outcome.OK, None)


def test_errors_with_or_without_data_are_a_graphql_error_counted_in_gateway_words() -> None:
    errors = [{"message": "s3cr3t table missing"}]
    assert read_response({"errors": errors}) == (
        Outcome.GRAPHQL_ERROR,
        None,
        errors,
        "1 GraphQL error",
    )
    outcome, data, found, detail = read_response({"data": {"a": 1}, "errors": errors * 2})
    assert (outcome, data, found) == (Outcome.GRAPHQL_ERROR, None, errors * 2)
    assert detail == "2 GraphQL errors with partial data"


@pytest.mark.parametrize("body", [{}, {"result": 1}, [1], "data", None, {"errors": "bad"}])
def test_a_body_that_is_not_a_graphql_response_is_invalid(body: Any) -> None:
    outcome, _, _, detail = read_response(body)
    assert outcome == Outcome.INVALID_RESPONSE
    assert detail.startswith("not a GraphQL response")


def test_the_request_body_is_the_query_the_operation_and_the_variables() -> None:
    template, _ = compile_body({"n": "{query.n:int}"}, lambda ref, at: ref)
    plan = GraphQLPlan.build('query Q { a(x: "\\u00e9") }', "Q", template)
    body = json.loads(plan.encode(lambda ref: "5"))
    assert body == {
        "query": 'query Q { a(x: "\\u00e9") }',
        "operationName": "Q",
        "variables": {"n": 5},
    }
    constant = GraphQLPlan.build("{ a }", None, compile_body({}, lambda ref, at: ref)[0])
    assert json.loads(constant.encode(lambda ref: None)) == {"query": "{ a }", "variables": {}}


# --- checking an operation (pure) --------------------------------------------------------


def test_a_syntax_error_names_its_line_and_column() -> None:
    check = check_operation("query {\n  stock(ids: [1) { id }\n}", None, {})
    assert check.problems == ("syntax error at line 2, column 16: Syntax Error: Unexpected ')'.",)


@pytest.mark.parametrize(
    ("query", "name", "problem"),
    [
        ("fragment F on T { a }", None, "the document has no operation (query or mutation)"),
        (
            "query A { a } query B { b }",
            None,
            "the document has several operations: name one with operation_name",
        ),
        ("query A { a }", "B", "the document has no operation named 'B'"),
        ("subscription { a }", None, "subscriptions are not supported (only query and mutation)"),
    ],
)
def test_the_operation_must_be_one_to_run(query: str, name: str | None, problem: str) -> None:
    assert check_operation(query, name, {}).problems == (problem,)


def test_variables_are_checked_against_the_declarations() -> None:
    query = "query($a: ID!, $b: Int!, $c: Int! = 3, $d: [ID]) { x(a: $a, b: $b, c: $c, d: $d) }"
    check = check_operation(query, None, {"a": "{body.a}", "e": 1})
    # $b is required and missing; $c has a default and $d is nullable: both may be left out
    assert check.problems == ("$b is declared non-null without a default: give it in variables",)
    assert check.warnings == ("variables.e is not declared by the operation (servers ignore it)",)


def test_graphql_core_is_imported_only_for_a_config_with_a_graphql_backend(tmp_path: Any) -> None:
    base = {"version": 1, "upstreams": {"u": {"url": "http://127.0.0.1:1"}}}
    plain = {
        **base,
        "endpoints": [{"path": "/a", "backends": [{"name": "a", "upstream": "u", "path": "/a"}]}],
    }
    graphql = {
        **base,
        "endpoints": [
            {
                "path": "/a",
                "backends": [{"name": "a", "upstream": "u", "graphql": {"query": "{ a }"}}],
            }
        ],
    }
    for config, imported in ((plain, False), (graphql, True)):
        file = tmp_path / "c.yaml"
        file.write_text(json.dumps(config))
        script = (
            "import sys; from gateway import load_config; "
            f"load_config({str(file)!r}); print('graphql' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == str(imported)


# --- config problems -------------------------------------------------------------------


def _problems(backends: list[dict[str, Any]], **endpoint: Any) -> list[str]:
    config = {
        "version": 1,
        "upstreams": {"g": {"url": "http://127.0.0.1:1/graphql"}},
        "endpoints": [{"path": "/api/{id}", "backends": backends, **endpoint}],
    }
    with pytest.raises(ConfigError) as info:
        load_config("g.yaml", {}, text=json.dumps(config))
    return [str(p) for p in info.value.problems]


def test_gateway_check_reports_every_graphql_problem_at_its_place() -> None:
    assert _problems(
        [
            {"name": "a", "upstream": "g", "graphql": {"query": "query { a(x: $x }"}},
            {
                "name": "b",
                "upstream": "g",
                "method": "GET",
                "body": "forward",
                "graphql": {
                    "query": "query($n: Int!) { b(n: $n) }",
                    "variables": {"m": "{body.m:integer}"},
                },
            },
            {
                "name": "c",
                "upstream": "g",
                "graphql": {"query": "{ c }", "variables": {"v": "{nope.x}"}},
            },
        ],
        method="POST",
    ) == [
        "g.yaml: endpoints[0].backends[0].graphql.query: syntax error at line 1, column 17: "
        "Syntax Error: Expected Name, found '}'.",
        "g.yaml: endpoints[0].backends[1].method: a GraphQL call is a POST",
        "g.yaml: endpoints[0].backends[1].body: a GraphQL backend sends its query and variables: not with body",
        "g.yaml: endpoints[0].backends[1].graphql.query: $n is declared non-null without a default: give it in variables",
        "g.yaml: endpoints[0].backends[1].graphql.variables.m: in {body.m:integer}: unknown conversion "
        "':integer' (use :int, :float, :str or :bool)",
        "g.yaml: endpoints[0].backends[2].graphql.variables.v: unknown backend in {nope.x} (other backends: a, b)",
    ]


def test_an_undeclared_variable_is_a_warning() -> None:
    config = {
        "version": 1,
        "upstreams": {"g": {"url": "http://127.0.0.1:1/graphql"}},
        "endpoints": [
            {
                "path": "/api",
                "backends": [
                    {
                        "name": "a",
                        "upstream": "g",
                        "graphql": {"query": "{ a }", "variables": {"x": 1}},
                    }
                ],
            }
        ],
    }
    plan = load_config("g.yaml", {}, text=json.dumps(config))
    assert [str(w) for w in plan.warnings] == [
        "g.yaml: endpoints[0].backends[0].graphql.variables: warning: variables.x is not "
        "declared by the operation (servers ignore it)"
    ]


# --- over a real upstream ----------------------------------------------------------------


ANSWERS: dict[str, Any] = {
    "data": {"data": {"stock": [{"id": "a", "available": 3, "secret": "x"}]}},
    "errors": {"errors": [{"message": "s3cr3t: stock service down", "path": ["stock"]}]},
    "both": {
        "data": {"stock": [{"id": "a", "available": 3}]},
        "errors": [{"message": "s3cr3t: partial"}, {"message": "again"}],
    },
    "plain": {"stock": []},
}


def graphql_upstream() -> tuple[list[RecordedRequest], Any]:
    """A GraphQL-ish server: answers the canned response its path names, whatever the
    query (it need not run GraphQL), and records every request."""
    return recorder(lambda req: Reply(json=ANSWERS[req.path.rsplit("/", 1)[1]]))


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_graphql_upstream_answering_data_errors_and_both(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = graphql_upstream()
        up = await start_upstream(nursery, handler)
        config = {
            "version": 1,
            "upstreams": {name: {"url": f"{up.url}/graphql/{name}"} for name in ANSWERS},
            "endpoints": [
                {
                    "path": "/api/stock",
                    "method": "POST",
                    "debug": True,
                    "backends": [
                        {
                            "name": "data",
                            "upstream": "data",
                            "graphql": {
                                "query": QUERY,
                                "variables": {
                                    "ids": "{body.items[*].sku}",
                                    "first": "{query.first:int}",
                                },
                            },
                            "select": "stock",
                            "allow": ["id", "available"],
                            "group": "stock",
                        },
                        {
                            "name": "errors",
                            "upstream": "errors",
                            "graphql": {"query": "{ stock { id } }"},
                            "default": [],
                        },
                        {
                            "name": "both",
                            "upstream": "both",
                            "graphql": {"query": "{ stock { id } }"},
                        },
                        {
                            "name": "plain",
                            "upstream": "plain",
                            "graphql": {"query": "{ stock { id } }"},
                        },
                    ],
                }
            ],
        }
        gw = await start_gateway(nursery, config)
        lines = Lines()
        access_log = logging.getLogger("gateway.access")
        access_log.addHandler(lines)
        level = access_log.level
        access_log.setLevel(logging.INFO)
        try:
            r = await gw.request(
                "POST", "/api/stock?first=2", json={"items": [{"sku": "a"}, {"sku": "b"}]}
            )
            while not lines.records:  # written once the response is sent
                await trio.testing.wait_all_tasks_blocked(0.001)
        finally:
            access_log.removeHandler(lines)
            access_log.setLevel(level)
    assert r.status_code == 200
    assert (
        r.headers["x-gateway-backends"]
        == "data=ok, errors=graphql_error, both=graphql_error, plain=invalid_response"
    )
    assert r.headers["x-gateway-complete"] == "false"
    body = r.json()
    debug = body.pop("_gateway")["backends"]
    # data shaped by select and allow; the errors backend's default; nothing from the others
    assert body == {"stock": [{"id": "a", "available": 3}], "errors": []}
    assert debug["errors"]["errors"] == ANSWERS["errors"]["errors"]
    assert debug["both"]["errors"] == ANSWERS["both"]["errors"]
    assert debug["errors"]["reason"] == "1 GraphQL error"
    assert debug["both"]["reason"] == "2 GraphQL errors with partial data"
    assert "errors" not in debug["data"] and "errors" not in debug["plain"]
    # the request: a POST of the query and typed variables, to the upstream's URL itself
    request = next(req for req in seen if req.path == "/graphql/data")
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "query": QUERY,
        "variables": {"ids": ["a", "b"], "first": 2},
    }
    # the access log gives the count, never the upstream's words
    logged = next(rec.access for rec in lines.records if hasattr(rec, "access"))["backends"]
    assert logged["errors"] == {
        "outcome": "graphql_error",
        "duration_ms": logged["errors"]["duration_ms"],
        "reason": "1 GraphQL error",
    }
    assert "s3cr3t" not in json.dumps(logged)


async def test_a_client_value_a_graphql_variable_cannot_convert_is_a_400_and_no_call(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = graphql_upstream()
        up = await start_upstream(nursery, handler)
        config = {
            "version": 1,
            "upstreams": {"g": {"url": f"{up.url}/graphql/data"}},
            "endpoints": [
                {
                    "path": "/api/stock",
                    "backends": [
                        {
                            "name": "s",
                            "upstream": "g",
                            "graphql": {
                                "query": QUERY,
                                "variables": {"first": "{query.first:int}"},
                            },
                        }
                    ],
                }
            ],
        }
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/stock?first=two")
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_query_parameter"
        assert (r.json()["error"]["parameter"], r.json()["error"]["in"]) == ("first", "query")
        assert seen == []
        r = await gw.get("/api/stock?first=3")
        assert r.status_code == 200
        assert json.loads(seen[0].body)["variables"] == {"first": 3}


def test_gateway_check_shows_a_graphql_backend(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway._cli import main

    file = tmp_path / "g.yaml"
    file.write_text(
        json.dumps(
            {
                "version": 1,
                "upstreams": {"g": {"url": "http://127.0.0.1:1/graphql"}},
                "endpoints": [
                    {
                        "path": "/s",
                        "backends": [
                            {"name": "stock", "upstream": "g", "graphql": {"query": "{ a }"}}
                        ],
                    }
                ],
            }
        )
    )
    assert main(["check", str(file)]) == 0
    assert "    stock            POST g  timeout 2s  [graphql]" in capsys.readouterr().out
