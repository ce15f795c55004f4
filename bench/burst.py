"""Burst benchmark: N simultaneous client requests, each fanning out to 3 backends.

    .venv/bin/python bench/burst.py [--requests 200] [--delay-ms 100] [--rounds 3]

The gateway runs in its own process pinned to core 0 (``taskset``); the upstreams (the
tests' h11 server, 3 instances) and the load generator share one process pinned to core 1.
Each round sends N requests at once, each on a fresh connection, and records how long the
burst took and how many answered 200. Both transports are measured in the same run:
the shipped one and a stock ``httpx.AsyncClient`` (httpcore's pool, default limits).
Reported as ratios against the ideal (one upstream delay).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import raw_request  # noqa: E402
from upstream import Reply, serve_upstream  # noqa: E402


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if os.cpu_count() and os.cpu_count() > 1 else []  # type: ignore[operator]


async def start_gateway(
    nursery: trio.Nursery, variant: str, config: Path
) -> tuple[str, trio.Process]:
    cmd = [
        *pin(0),
        sys.executable,
        str(ROOT / "bench" / "serve_variant.py"),
        variant,
        str(config),
        "127.0.0.1:0",
    ]
    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process, cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False
        )
    )
    assert proc.stdout is not None
    seen = b""
    while not (m := re.search(rb"serving (http://\S+)", seen)):
        data = await proc.stdout.receive_some(4096)
        if not data:
            raise SystemExit(f"{variant} gateway did not start: {seen!r}")
        seen += data
    return m.group(1).decode(), proc


async def burst(url: str, n: int) -> tuple[float, Counter[int]]:
    statuses: Counter[int] = Counter()

    async def one(i: int) -> None:
        try:
            statuses[(await raw_request(url, f"/api/{i}")).status] += 1
        except OSError:
            statuses[0] += 1  # connection refused/reset: 0

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return trio.current_time() - start, statuses


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
    delay_s = args.delay_ms / 1000
    results: dict[str, list[tuple[float, Counter[int]]]] = {}
    async with trio.open_nursery() as nursery:
        ups = [
            await nursery.start(serve_upstream, {"/x": Reply(json={"k": i}, delay_s=delay_s)})
            for i in range(3)
        ]
        config = {
            "version": 1,
            "defaults": {"timeout": "2s", "deadline": "2s"},
            "upstreams": {f"u{i}": {"url": up.url} for i, up in enumerate(ups)},
            "endpoints": [
                {
                    "path": "/api/{id}",
                    "backends": [
                        {"name": f"b{i}", "upstream": f"u{i}", "path": "/x", "required": True}
                        for i in range(3)
                    ],
                }
            ],
        }
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            json.dump(config, fh)
        for variant in ("gateway", "httpcore"):
            url, proc = await start_gateway(nursery, variant, Path(fh.name))
            await burst(url, 10)  # warm up
            results[variant] = []
            for _ in range(args.rounds):
                results[variant].append(await burst(url, args.requests))
                await trio.sleep(0.5)
            proc.terminate()
            await proc.wait()
        nursery.cancel_scope.cancel()

    print(
        f"\n{args.requests} simultaneous requests x 3 backends of {args.delay_ms} ms, {args.rounds} rounds"
    )
    print(
        f"{'transport':<10} {'burst s (median)':>17} {'x ideal':>8} {'200s':>7} {'504s':>6} {'other':>6}"
    )
    for variant, rounds in results.items():
        times = sorted(t for t, _ in rounds)
        median = times[len(times) // 2]
        total: Counter[int] = Counter()
        for _, c in rounds:
            total.update(c)
        n = args.requests * args.rounds
        other = n - total[200] - total[504]
        print(
            f"{variant:<10} {median:>17.2f} {median / delay_s:>8.1f} {total[200] / n:>7.0%} {total[504] / n:>6.0%} {other / n:>6.0%}"
        )
    g = sorted(t for t, _ in results["gateway"])[args.rounds // 2]
    h = sorted(t for t, _ in results["httpcore"])[args.rounds // 2]
    print(f"\nhttpcore / gateway transport burst time: {h / g:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    trio.run(main, parser.parse_args())
