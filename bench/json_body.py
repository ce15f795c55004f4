"""What reading a client's JSON body strictly costs (gateway._rules.jsonvalue.read_json:
names twice in one object and integers beyond 64 bits refused) against orjson.loads alone.

    .venv/bin/python bench/json_body.py [--rounds 9] [--seconds 0.2]

No server: the two functions on prebuilt bodies, interleaved, in one process. Each round
times every body with both for ``seconds``; the median round is reported in microseconds
per body.

- ``cart``: the README's cart, 5 items (190 bytes);
- ``order``: 200 line items with names and tags (14 KB);
- ``ids``: 200 items with 19-digit ids (below ``2**64``: not suspect);
- ``escaped``: the cart with a colon written ``\\u003a`` (counted as one);
- ``negative``: 200 items with 19-digit negative numbers, which may be below ``-2**63``:
  parsed again to see (the slow path a client can choose, bounded by
  ``max_request_body``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import orjson

from gateway._rules.jsonvalue import read_json

CART = {"items": [{"sku": f"SKU-{i}", "qty": i + 1} for i in range(5)], "coupon": "SPRING24"}
ORDER = {
    "items": [
        {"sku": f"A{i}", "qty": i, "name": f"some product name {i}", "tags": ["x", "y"]}
        for i in range(200)
    ]
}
IDS = {"items": [{"id": 1234567890123456789 + i, "qty": 1} for i in range(200)]}
NEGATIVE = {"items": [{"id": -1234567890123456789 - i, "qty": 1} for i in range(200)]}
BODIES = {
    "cart": orjson.dumps(CART),
    "order": orjson.dumps(ORDER),
    "ids": orjson.dumps(IDS),
    "escaped": orjson.dumps(CART).replace(b"SPRING24", b"SPRING\\u003a24"),
    "negative": orjson.dumps(NEGATIVE),
}


def per_call_us(call: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(100):
            call()
        n += 100
    return (now - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.2)
    args = parser.parse_args()
    us: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, body in BODIES.items():
            for how, call in (("orjson", orjson.loads), ("strict", read_json)):
                us.setdefault((name, how), []).append(
                    per_call_us(lambda: call(body), args.seconds)  # noqa: B023 - run at once
                )
    print("| body | bytes | orjson.loads (us) | read_json (us) | added (us) |")
    print("| --- | --- | --- | --- | --- |")
    for name, body in BODIES.items():
        plain = statistics.median(us[(name, "orjson")])
        strict = statistics.median(us[(name, "strict")])
        print(f"| {name} | {len(body)} | {plain:.2f} | {strict:.2f} | {strict - plain:.2f} |")


if __name__ == "__main__":
    main()
