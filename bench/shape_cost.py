"""Cost per request of an endpoint's collections work on a realistic merged body, in
microseconds.

    .venv/bin/python bench/shape_cost.py [--runs 3000] [--orders 20]
    taskset -c 0 .venv/bin/python bench/shape_cost.py   # steadier on a shared machine

The body is what the README's collections example merges: ``--orders`` orders (half from
``recent``, half from ``archived``, 8 fields each) and one catalog answer per order (10
fields, one nested), plus a profile object. Measured, each on its own:

- ``merge`` (the hot path's :func:`~gateway._rules.aggregate.merge`, no collections);
- ``merge concat``: :func:`~gateway._rules.collect.merge_collected` with concat;
- ``+ into``: concat and the products placed into the orders
  (:meth:`CollectionsPlan.body` without a shape);
- the endpoint ``shape`` alone on the merged body: ``allow`` with ``[*]`` (the README's),
  ``deny``, ``rename``, a projecting ``select``;
- ``everything``: merge, into and the allow shape (``CollectionsPlan.body``);
- ``orjson.dumps``: serialising the merged body, which every request pays, for scale.

Each figure is the median of ``--runs`` single calls timed with ``perf_counter_ns`` after
a warm-up, the variants interleaved call by call (as ``bench/jwt_cost.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from gateway._rules.aggregate import BackendResult, Outcome, Placement, merge
from gateway._rules.collect import CollectionsPlan, IntoPlan, ItemResults, merge_collected
from gateway._rules.transform import Transform


def order(i: int) -> dict[str, Any]:
    return {
        "id": f"o-{i}",
        "product_id": f"p-{i}",
        "quantity": i % 3 + 1,
        "total": 9.5 + i,
        "status": "shipped",
        "warehouse": "w1",
        "created": "2026-11-29T10:00:00Z",
        "tags": ["gift", "express"],
    }


def product(i: int) -> dict[str, Any]:
    return {
        "id": f"p-{i}",
        "name": f"product {i}",
        "price": 19.9,
        "currency": "EUR",
        "stock": 12,
        "weight_g": 340,
        "category": "mugs",
        "rating": 4.5,
        "description": "a mug " * 8,
        "dimensions": {"w": 9, "h": 11, "d": 9},
    }


def scenario(orders: int) -> tuple[list[Placement], list[BackendResult], CollectionsPlan]:
    half = orders // 2
    placements = [
        Placement("profile", True, "profile", False),
        Placement("recent", False, "orders", False),
        Placement("archived", False, "orders", False),
        Placement("product", False, None, False),
    ]
    products = [product(i) for i in range(orders)]
    results = [
        BackendResult(Outcome.OK, {"name": "Ada", "email": "ada@example.com", "tier": "gold"}),
        BackendResult(Outcome.OK, [order(i) for i in range(half)]),
        BackendResult(Outcome.OK, [order(i) for i in range(half, orders)]),
        # one failed call under on_item_error "null", as a live endpoint would see now and then
        BackendResult(
            Outcome.OK,
            ItemResults((*products[:-1], None), frozenset({orders - 1}), "null"),
        ),
    ]
    plan = CollectionsPlan(
        first_slot=len(placements),
        concat_arrays=True,
        into=(IntoPlan(3, ("orders",), ("product",)),),
    )
    return placements, results, plan


def medians_us(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    samples: dict[str, list[int]] = {name: [] for name in calls}
    for round_ in range(runs + 200):  # the first 200 rounds warm up
        for name, call in calls.items():
            start = time.perf_counter_ns()
            call()
            if round_ >= 200:
                samples[name].append(time.perf_counter_ns() - start)
    return {name: statistics.median(values) / 1000 for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--orders", type=int, default=20)
    args = parser.parse_args()
    placements, results, plan = scenario(args.orders)
    plain = [*results[:3], BackendResult(Outcome.SKIPPED)]
    merged = plan.body(placements, results)
    allow = Transform.compile(allow=["orders[*].id", "orders[*].product.name"])
    shapes = {
        "shape allow [*]": allow,
        "shape deny [*]": Transform.compile(
            deny=["orders[*].tags", "orders[*].product.description"]
        ),
        "shape rename [*]": Transform.compile(rename={"orders[*].product": "item"}),
        "shape select [*]": Transform.compile(select="orders[*].product.name"),
    }
    everything = CollectionsPlan(plan.first_slot, True, into=plan.into, shape=allow)
    calls: dict[str, Callable[[], object]] = {
        "merge": lambda: merge(placements, plain),
        "merge concat": lambda: merge_collected(placements, plain, True),
        "merge concat + into": lambda: plan.body(placements, results),
        **{name: (lambda t=t: t.apply(merged)) for name, t in shapes.items()},
        "everything": lambda: everything.body(placements, results),
        "orjson.dumps": lambda: orjson.dumps(merged),
    }
    row = medians_us(calls, args.runs)
    size = len(orjson.dumps(merged))
    print(
        f"us per request, median of {args.runs}; {args.orders} orders, merged body "
        f"{size} bytes (Python {sys.version.split()[0]})"
    )
    for name, us in row.items():
        print(f"  {name:<22} {us:8.1f}")


if __name__ == "__main__":
    main()
