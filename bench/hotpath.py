"""CPU per aggregated request on the hot path, without the HTTP server: an interleaved A/B
of two checkouts.

    bench/.venv/bin/python bench/hotpath.py /path/to/other/checkout [--rounds 8] [--requests 3000]

Each measurement is a fresh process of one checkout's ``.venv`` python (pinned to core 0;
nginx on core 1) that calls ``serve_aggregate`` directly, one request at a time, for an
endpoint of 3 backends on nginx, through the gateway's own transport, and prints the
process CPU time per request after a warm-up. Without hypercorn, the load generator and
the network stack of the client side, what remains is the code a change to the request
path touches, and CPU time moves far less than throughput when the machine is shared.
Rounds alternate A, B, B, A, ...; the medians and B/A are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def child(upstream: str, requests: int) -> None:
    import trio

    from gateway import GatewayTransport, load_config
    from gateway._app import pool_limits
    from gateway._endpoint import serve_aggregate

    config = {
        "version": 1,
        "upstreams": {"nginx": {"url": upstream}},
        "endpoints": [
            {
                "path": "/api/{id}",
                "backends": [
                    {"name": f"b{i}", "upstream": "nginx", "path": "/json/{id}", "group": f"b{i}"}
                    for i in range(3)
                ],
            }
        ],
    }
    plan = load_config("bench.yaml", {}, text=json.dumps(config))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/7",
        "raw_path": b"/api/7",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def main() -> None:
        transport = GatewayTransport(pool_limits(plan))
        match = plan.router.match("/api/7", "GET")
        for _ in range(300):  # warm-up: imports, pools, caches
            await serve_aggregate(transport.send, plan, match, scope, receive, send)
        statuses.clear()
        start = time.process_time()
        for _ in range(requests):
            await serve_aggregate(transport.send, plan, match, scope, receive, send)
        print((time.process_time() - start) / requests * 1e6)
        assert statuses == [200] * requests, set(statuses)
        await transport.aclose()

    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("other", type=Path, nargs="?", help="the checkout to compare (A)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--child", nargs=2, metavar=("UPSTREAM", "REQUESTS"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    sys.path.insert(0, str(HERE))
    from upstream_nginx import Nginx

    pythons = {
        "A": args.other.resolve() / ".venv" / "bin" / "python",
        "B": HERE.parent / ".venv" / "bin" / "python",
    }
    us: dict[str, list[float]] = {"A": [], "B": []}
    with Nginx(core=1) as upstream:
        for round_ in range(args.rounds):
            for side in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
                out = subprocess.run(
                    [
                        "taskset",
                        "-c",
                        "0",
                        str(pythons[side]),
                        __file__,
                        "--child",
                        upstream,
                        str(args.requests),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd="/",
                ).stdout
                us[side].append(float(out.strip().splitlines()[-1]))
                print(f"round {round_} {side} {us[side][-1]:.1f} CPU us/request", flush=True)
    a, b = statistics.median(us["A"]), statistics.median(us["B"])
    print()
    print("| A CPU us/request | B CPU us/request | B / A |")
    print("| --- | --- | --- |")
    print(f"| {a:.1f} | {b:.1f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
