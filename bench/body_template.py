"""What a templated JSON body costs per request: checking the client's values when the
request arrives, then rendering and encoding the body, against a backend that sends none.

    .venv/bin/python bench/body_template.py [--rounds 7] [--requests 20000]

No server and no upstream: the gateway's own functions on a prebuilt request context, in
one process, so the figures are the template's CPU cost alone. Each round times
``requests`` calls of every variant, interleaved variant by variant; the median round is
reported in microseconds per request.

- ``get``: ``build_request`` of a GET backend with one path reference (the hot path's
  call, for scale);
- ``small check`` / ``small build``: the issue's template
  (``{sku: "{body.items[*].sku}", qty: "{body.count:int}", user: "{header.X-User}"}``),
  3 items: ``check_client_values`` (the 400-before-any-call check), then
  ``build_request`` with the body rendered and encoded;
- ``order check`` / ``order build``: a realistic order (14 references: nested objects, a
  mixed string, conversions, 10 line items through ``[*]``, a value of another backend);
- ``orjson floor``: ``orjson.dumps`` of the order's finished body (what no template can
  beat).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway import load_config
from gateway._call.context import CallContext
from gateway._call.request import build_request, check_client_values
from gateway._rules.aggregate import BackendResult, Outcome

SMALL = {"sku": "{body.items[*].sku}", "qty": "{body.count:int}", "user": "{header.X-User}"}
ORDER = {
    "customer": {"id": "{body.customer.id:int}", "email": "{body.customer.email}"},
    "lines": {"skus": "{body.items[*].sku}", "quantities": "{body.items[*].qty:int}"},
    "shipping": {
        "address": "{body.shipping}",
        "express": "{body.express:bool}",
        "label": "{body.customer.name}, {body.shipping.city} ({body.shipping.zip})",
    },
    "pricing": {"currency": "EUR", "quote": "{quote.id}", "total": "{quote.total:float}"},
    "channel": "{query.channel}",
    "tenant": "{header.X-Tenant}",
    "order": "{id:int}",
    "version": 2,
}
CLIENT_BODY = {
    "customer": {"id": "4711", "email": "jane@example.com", "name": "Jane Doe"},
    "items": [{"sku": f"SKU-{i:04d}", "qty": str(i + 1)} for i in range(10)],
    "shipping": {"street": "1 Main St", "city": "Lyon", "zip": "69001", "country": "FR"},
    "express": "true",
    "count": "3",
}


def setup() -> tuple[dict[str, Callable[[], object]], Any]:
    config = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [
            {
                "path": "/api/{id}",
                "method": "POST",
                "backends": [
                    {"name": "get", "upstream": "u", "path": "/users/{id}"},
                    {"name": "quote", "upstream": "u", "path": "/quote"},
                    {
                        "name": "small",
                        "upstream": "u",
                        "path": "/small",
                        "method": "POST",
                        "body": {"template": SMALL},
                    },
                    {
                        "name": "order",
                        "upstream": "u",
                        "path": "/order",
                        "method": "POST",
                        "body": {"template": ORDER},
                    },
                ],
            }
        ],
    }
    plan = load_config("bench.yaml", {}, text=json.dumps(config))
    (endpoint,) = plan.endpoints
    get, _, small, order = endpoint.backends
    body = orjson.dumps(CLIENT_BODY)
    small_body = {**CLIENT_BODY, "items": CLIENT_BODY["items"][:3]}
    ctx = CallContext(
        {"id": "7"},
        query={"channel": ["web"]},
        headers={"x-tenant": "acme", "x-user": "u-1"},
        body=body,
        json_body=orjson.loads(body),
    )
    small_ctx = CallContext(
        {"id": "7"},
        headers={"x-user": "u-1"},
        body=orjson.dumps(small_body),
        json_body=small_body,
    )
    quote = BackendResult(Outcome.OK, {}, selected={"id": "q-1", "total": "129.90"})
    results: list[BackendResult | None] = [None, quote, None, None]
    small_only = type(endpoint)(**{**endpoint.__dict__, "backends": (small,)})
    order_only = type(endpoint)(**{**endpoint.__dict__, "backends": (order,)})
    finished = orjson.loads(build_request(order, ctx, results).body or b"")
    variants: dict[str, Callable[[], object]] = {
        "get": lambda: build_request(get, ctx, results),
        "small check": lambda: check_client_values(small_only, small_ctx),
        "small build": lambda: build_request(small, small_ctx, results),
        "order check": lambda: check_client_values(order_only, ctx),
        "order build": lambda: build_request(order, ctx, results),
        "orjson floor": lambda: orjson.dumps(finished),
    }
    return variants, finished


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    variants, finished = setup()
    print("order body:", orjson.dumps(finished).decode()[:160], "...")
    us: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, call in variants.items():
            start = time.perf_counter()
            for _ in range(args.requests):
                call()
            us[name].append((time.perf_counter() - start) / args.requests * 1e6)
    print()
    print("| variant | us/request (median) | min | max |")
    print("| --- | --- | --- | --- |")
    for name, values in us.items():
        print(
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
