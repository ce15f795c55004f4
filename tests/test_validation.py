"""Request validation over real upstreams: a body or query that fails the endpoint's
`request_schema` or `query_schema` is 400 `schema_violation` naming the failing value's
JSONPath, and no upstream is called; a valid request goes through unchanged. Schemas in
files are found relative to the config file; every problem with one is reported at load
with the config file and the path.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import Gateway, backend_config, recorder, start_gateway, start_upstream

from gateway import create_app, hypercorn_config, load_config, serve_app
from gateway._cli import main
from gateway._errors import ConfigError

CART_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["items"],
    "additionalProperties": False,
    "properties": {
        "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/item"}},
        "coupon": {"type": "string", "pattern": "^[A-Z0-9]{4,12}$"},
    },
    "$defs": {
        "item": {
            "type": "object",
            "required": ["sku", "qty"],
            "properties": {
                "sku": {"type": "string"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 99},
            },
        }
    },
}

QUERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "limit": {"type": "string", "pattern": "^[0-9]{1,3}$"},
        "tag": {"type": "array", "maxItems": 3, "items": {"enum": ["red", "green", "blue"]}},
    },
}


def cart_config(url: str, **endpoint: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {"pricing": {"url": url}},
        "endpoints": [
            {
                "path": "/api/cart",
                "method": "POST",
                "backends": [
                    backend_config("price", "pricing", "/quote", method="POST", body="forward"),
                    backend_config("stock", "pricing", "/stock", required=False),
                ],
                **endpoint,
            }
        ],
    }


async def start_gateway_from(nursery: trio.Nursery, file: Path) -> Gateway:
    """Serve the config file at ``file`` (its schema files are found next to it)."""
    app = create_app(load_config(str(file), {}))
    hc = hypercorn_config(app.plan, bind="127.0.0.1:0")
    binds = await nursery.start(partial(serve_app, app, hc))
    return Gateway(binds[0], app, httpx.AsyncClient(timeout=30, trust_env=False))


# --- the body ----------------------------------------------------------------------------


async def test_a_body_that_fails_its_schema_is_a_400_naming_the_path_and_no_upstream_is_called(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, cart_config(up.url, request_schema=CART_SCHEMA))
        cases = [
            (
                {"items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 0}]},
                "$.items[1].qty",
                "minimum",
            ),
            ({"items": [{"sku": "A", "qty": "two"}]}, "$.items[0].qty", "type"),
            ({"items": [{"qty": 1}]}, "$.items[0]", "required"),
            ({"items": []}, "$.items", "minItems"),
            ({"items": [{"sku": "A", "qty": 1}], "coupon": "no!"}, "$.coupon", "pattern"),
            ({"items": [{"sku": "A", "qty": 1}], "extra": True}, "$", "additionalProperties"),
            (["not", "an", "object"], "$", "type"),
        ]
        for body, path, keyword in cases:
            r = await gw.request("POST", "/api/cart", json=body)
            assert r.status_code == 400, body
            error = r.json()["error"]
            assert error["code"] == "schema_violation"
            assert (error["in"], error["path"], error["keyword"]) == ("body", path, keyword)
            assert error["message"].startswith(f"request body at {path}: ")
        assert seen == []  # neither backend was called, not even the one without the body
        assert up.requests == []


async def test_the_message_says_what_was_expected_and_never_repeats_the_value(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, recorder()[1])
        gw = await start_gateway(nursery, cart_config(up.url, request_schema=CART_SCHEMA))
        r = await gw.request("POST", "/api/cart", json={"items": [{"sku": "A", "qty": 0}]})
        assert r.json()["error"]["message"] == (
            "request body at $.items[0].qty: the value is less than the minimum of 1"
        )
        r = await gw.request(
            "POST", "/api/cart", json={"items": [{"sku": "A", "qty": 1}], "coupon": "s3cr3t!"}
        )
        assert "s3cr3t" not in r.text


async def test_a_valid_body_reaches_the_upstream_unchanged(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, cart_config(up.url, request_schema=CART_SCHEMA))
        body = b'{"items": [{"sku": "A-1", "qty": 2}], "coupon": "WINTER24"}'
        r = await gw.request(
            "POST", "/api/cart", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 200
        assert sorted(req.path for req in seen) == ["/quote", "/stock"]
        assert next(req for req in seen if req.path == "/quote").body == body


async def test_a_missing_or_unparsable_body_is_invalid_request_body(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = cart_config(up.url, request_schema=CART_SCHEMA)
        # a backend that does not send the body: the schema alone makes the gateway read it
        config["endpoints"][0]["backends"] = [backend_config("stock", "pricing", "/stock")]
        gw = await start_gateway(nursery, config)
        for content in (b"", b"{not json"):
            r = await gw.request("POST", "/api/cart", content=content)
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "invalid_request_body"
            assert r.json()["error"]["in"] == "body"
        r = await gw.request("POST", "/api/cart", json={"items": [{"sku": "A", "qty": 5}]})
        assert r.status_code == 200
        assert [req.path for req in seen] == ["/stock"]


@pytest.mark.parametrize(
    ("content", "path", "words"),
    [
        (b'{"items":[{"sku":"A","qty":0,"qty":1}]}', "$.items[0].qty", "a name appears twice"),
        (b'{"items":[{"sku":"A","qty":1}],"items":[]}', "$.items", "a name appears twice"),
        (b'{"items":[{"sku":"A","qty":18446744073709551616}]}', "$.items[0].qty", "64 bits"),
        (b'{"items":[{"sku":"A","qty":-9223372036854775809}]}', "$.items[0].qty", "64 bits"),
    ],
)
async def test_a_body_the_schema_and_the_upstream_would_read_differently_is_refused(
    nursery: trio.Nursery, content: bytes, path: str, words: str
) -> None:
    """orjson keeps the last of two equal names and reads a huge integer as a float: the
    schema would check a value other than the one body: forward sends (qty 0 first, which
    an upstream reading the first name takes)."""
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, cart_config(up.url, request_schema=CART_SCHEMA))
        r = await gw.request("POST", "/api/cart", content=content)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["in"], error["path"]) == ("invalid_request_body", "body", path)
        assert words in error["message"]
        assert seen == []
        # the largest 64-bit integers, and the same names in different objects, are fine
        fine = b'{"items":[{"sku":"A","qty":1,"n":18446744073709551615},{"sku":"B","qty":2}]}'
        r = await gw.request("POST", "/api/cart", content=fine)
        assert r.status_code == 200, r.text
        assert next(req for req in seen if req.path == "/quote").body == fine


# --- the query ---------------------------------------------------------------------------


def query_config(url: str, **endpoint: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {"catalog": {"url": url}},
        "endpoints": [
            {
                "path": "/api/products",
                "query_schema": QUERY_SCHEMA,
                "forward_query": ["limit", "tag"],
                "backends": [backend_config("products", "catalog", "/products")],
                **endpoint,
            }
        ],
    }


async def test_a_query_that_fails_its_schema_names_the_parameter_and_no_upstream_is_called(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, query_config(up.url))
        cases = [
            ("?limit=ten", "$.limit", "pattern", "limit"),
            ("?limit=5&limit=x", None, None, None),  # only the first value is checked
            ("?tag=red&tag=pink", "$.tag[1]", "enum", "tag"),  # every value of an array
            ("?tag=red&tag=red&tag=red&tag=red", "$.tag", "maxItems", "tag"),
            ("?other=1", "$", "additionalProperties", None),
        ]
        for query, path, keyword, parameter in cases:
            r = await gw.get("/api/products" + query)
            if path is None:
                assert r.status_code == 200, query
                continue
            assert r.status_code == 400, query
            error = r.json()["error"]
            assert error["code"] == "schema_violation"
            assert (error["in"], error["path"], error["keyword"]) == ("query", path, keyword)
            assert error.get("parameter") == parameter
        assert [req.target for req in seen] == ["/products?limit=5&limit=x"]
        r = await gw.get("/api/products?tag=red&tag=blue&limit=20")
        assert r.status_code == 200
        assert seen[-1].target == "/products?tag=red&tag=blue&limit=20"


async def test_malformed_percent_encoding_in_a_query_the_schema_reads_is_named_as_such(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        # not forwarded (forward_query refuses a malformed value of its own)
        gw = await start_gateway(nursery, query_config(up.url, forward_query=[]))
        for query, name in (("?limit=%G1", "limit"), ("?tag=red&tag=%", "tag")):
            r = await gw.get("/api/products" + query)
            assert r.status_code == 400, query
            assert r.json()["error"] == {
                "code": "invalid_query_parameter",
                "message": f"query parameter {name!r}: malformed percent-encoding",
                "parameter": name,
                "in": "query",
                "request_id": r.headers["x-request-id"],
            }
        assert seen == []
        # a later value of a parameter the schema reads once is not read: not refused
        r = await gw.get("/api/products?limit=5&limit=%G1")
        assert r.status_code == 200, r.text


async def test_a_passthrough_endpoint_checks_its_query_before_the_upstream(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, query_config(up.url, passthrough=True, forward_query=[]))
        r = await gw.get("/api/products?tag=pink")
        assert r.status_code == 400
        assert r.json()["error"]["path"] == "$.tag[0]"
        assert seen == []
        r = await gw.get("/api/products?tag=green")
        assert r.status_code == 200
        assert len(seen) == 1


# --- where it runs among the request's layers ------------------------------------------


async def test_validation_runs_after_the_rate_limit(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = cart_config(up.url, request_schema=CART_SCHEMA, rate_limit={"rate": "1/min"})
        gw = await start_gateway(nursery, config)
        r = await gw.request("POST", "/api/cart", json={"items": []})
        assert r.status_code == 400  # refused by the schema, with the rate limit's token used
        r = await gw.request("POST", "/api/cart", json={"items": [{"sku": "A", "qty": 1}]})
        assert r.status_code == 429
        assert seen == []


# --- schema files and config problems ---------------------------------------------------


def write_config(tmp_path: Path, endpoint: dict[str, Any], url: str = "http://127.0.0.1:9") -> Path:
    config = cart_config(url, **endpoint)
    (tmp_path / "conf").mkdir(exist_ok=True)
    file = tmp_path / "conf" / "gateway.yaml"
    file.write_text(json.dumps(config))
    return file


async def test_schema_files_are_found_relative_to_the_config_file(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        (tmp_path / "conf" / "schemas").mkdir(parents=True)
        (tmp_path / "conf" / "schemas" / "cart.json").write_text(json.dumps(CART_SCHEMA))
        (tmp_path / "conf" / "schemas" / "query.yaml").write_text(
            "properties:\n  dry_run: {enum: ['true', 'false']}\n"
        )
        file = write_config(
            tmp_path,
            {"request_schema": "schemas/cart.json", "query_schema": "schemas/query.yaml"},
            up.url,
        )
        monkeypatch.chdir(tmp_path)  # not the config's directory
        gw = await start_gateway_from(nursery, file)
        r = await gw.request("POST", "/api/cart", json={"items": [{"sku": "A", "qty": 100}]})
        assert r.json()["error"]["path"] == "$.items[0].qty"
        r = await gw.request(
            "POST", "/api/cart?dry_run=maybe", json={"items": [{"sku": "A", "qty": 1}]}
        )
        assert (r.json()["error"]["in"], r.json()["error"]["parameter"]) == ("query", "dry_run")
        assert seen == []
        r = await gw.request(
            "POST", "/api/cart?dry_run=true", json={"items": [{"sku": "A", "qty": 1}]}
        )
        assert r.status_code == 200
        assert len(seen) == 2


def problems_of(file: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(str(file), {})
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


def test_an_unreadable_or_unparsable_schema_file_is_a_config_problem(tmp_path: Path) -> None:
    file = write_config(tmp_path, {"request_schema": "missing.json", "query_schema": "bad.yaml"})
    (tmp_path / "conf" / "bad.yaml").write_text("properties: [unclosed\n")
    missing = tmp_path / "conf" / "missing.json"
    assert problems_of(file) == [
        f"endpoints[0].request_schema: missing.json: cannot read {missing}: "
        "No such file or directory",
        "endpoints[0].query_schema: bad.yaml: invalid YAML at line 2, column 1: did not find "
        "expected ',' or ']' (while parsing a flow sequence started at line 1, column 13)",
    ]
    (tmp_path / "conf" / "missing.json").write_text('{"type": "object",}')
    assert problems_of(file)[0].startswith(
        "endpoints[0].request_schema: missing.json: not valid JSON"
    )


def test_a_schema_its_metaschema_refuses_is_reported_with_where_inside_it(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "cart.json").write_text(
        json.dumps({"properties": {"qty": {"type": "integer", "minimum": "1"}}})
    )
    file = write_config(
        tmp_path,
        {
            "request_schema": "cart.json",
            "query_schema": {"properties": {"tag": {"type": "arrray"}}},
        },
    )
    assert problems_of(file) == [
        'endpoints[0].request_schema: cart.json at /properties/qty/minimum: "1" is not of '
        'type "number"',
        'endpoints[0].query_schema.properties.tag.type: "arrray" is not valid under any of '
        "the schemas listed in the 'anyOf' keyword",
    ]


def test_every_metaschema_problem_of_an_inline_schema_is_reported(tmp_path: Path) -> None:
    schema = {"type": "objekt", "properties": {"qty": {"minimum": "one"}}}
    file = write_config(tmp_path, {"request_schema": schema})
    assert problems_of(file) == [
        'endpoints[0].request_schema.properties.qty.minimum: "one" is not of type "number"',
        'endpoints[0].request_schema.type: "objekt" is not valid under any of the schemas '
        "listed in the 'anyOf' keyword",
    ]


def test_a_schema_file_with_a_name_twice_in_one_object_is_a_config_problem(
    tmp_path: Path,
) -> None:
    file = write_config(tmp_path, {"request_schema": "dup.json", "query_schema": "dup.yaml"})
    (tmp_path / "conf" / "dup.json").write_text(
        '{"properties": {"qty": {"type": "integer", "type": "string"}}}'
    )
    (tmp_path / "conf" / "dup.yaml").write_text("type: object\ntype: array\n")
    assert problems_of(file) == [
        "endpoints[0].request_schema: dup.json: at /properties/qty/type: a name appears twice "
        "in one object (names must be unique: RFC 8259 section 4, RFC 7493 section 2.3)",
        "endpoints[0].query_schema: dup.yaml: duplicate key 'type' at line 2 (first at line "
        "1): keys of a mapping must be unique",
    ]


def test_schemas_on_endpoints_that_cannot_use_them_are_config_problems(tmp_path: Path) -> None:
    file = write_config(tmp_path, {"method": "GET", "request_schema": {"type": "object"}})
    config = json.loads(file.read_text())
    config["endpoints"][0]["backends"] = [backend_config("stock", "pricing", "/stock")]
    config["endpoints"].append(
        {
            "path": "/upload",
            "method": "PUT",
            "passthrough": True,
            "request_schema": {"type": "object"},
            "backends": [backend_config("files", "pricing", "/files")],
        }
    )
    file.write_text(json.dumps(config))
    problems = problems_of(file)
    assert problems[0].startswith("endpoints[0].request_schema: a GET request has no body")
    assert problems[1].startswith(
        "endpoints[1].request_schema: a passthrough endpoint streams the request body"
    )


def test_gateway_check_reports_a_ref_to_another_document_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_config(
        tmp_path, {"request_schema": {"properties": {"a": {"$ref": "common.json#/$defs/a"}}}}
    )
    assert main(["check", str(file)]) == 2
    assert capsys.readouterr().err == (
        f"{file}: endpoints[0].request_schema: Resource 'common.json#/$defs/a' is another "
        "document: only references within the schema are resolved (put shared parts under "
        "$defs)\n"
    )


def test_a_yaml_value_that_is_not_json_in_an_inline_schema_is_named() -> None:
    text = (
        "version: 1\n"
        "upstreams: {u: {url: 'http://127.0.0.1:9'}}\n"
        "endpoints:\n"
        "  - path: /a\n"
        "    query_schema: {properties: {since: {default: 2024-01-01}}}\n"
        "    backends: [{name: a, upstream: u, path: /x}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config("gw.yaml", {}, text=text)
    assert [str(p) for p in caught.value.problems] == [
        "gw.yaml: endpoints[0].query_schema: properties.since.default: a date is not a JSON "
        "value (quote it)"
    ]
    load_config("gw.yaml", {}, text=text.replace("2024-01-01", "'2024-01-01'"))


def test_a_query_schema_that_cannot_accept_an_object_is_a_config_problem(tmp_path: Path) -> None:
    """The query is checked as an object of its parameters: a root type without object
    would refuse every request."""
    for schema_type in ("array", ["string", "null"]):
        file = write_config(tmp_path, {"query_schema": {"type": schema_type}})
        assert problems_of(file) == [
            "endpoints[0].query_schema.type: the query is checked as an object of its "
            "parameters: the type must allow object"
        ]
    file = write_config(tmp_path, {"query_schema": {"type": ["object", "null"]}})
    assert load_config(str(file), {}).endpoints[0].query_schema is not None
