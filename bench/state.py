"""What rate limits and caches cost (or save), as ratios to the same endpoint without them.

    .venv/bin/python bench/state.py [--seconds 10]

3 backends on nginx (no delay), c=64, the gateway pinned to core 0 and wrk (and
redis-server) to core 1, every variant in the same run:

- plain: no limit, no cache;
- rate limit in memory / on Redis: one generous limit per client IP (never refuses);
- backend cache in memory: every backend call answered from the cache;
- aggregate cache in memory / on Redis: every request answered from the cache.

Needs nginx with the echo module, wrk and redis-server (``bench/run`` installs the first
two; ``apt-get install redis-server``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import GATEWAY_PY, LOAD_CORE, SUT_CORE, Wrk, wait_port, wrk  # noqa: E402
from upstream_nginx import Nginx, free_port  # noqa: E402

VARIANTS = (
    "plain",
    "rate limit, memory",
    "rate limit, Redis",
    "backend cache, memory",
    "aggregate cache, memory",
    "aggregate cache, Redis",
)


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    cmd = ["taskset", "-c", LOAD_CORE, binary, "--port", str(port), "--save", "",
           "--appendonly", "no", "--loglevel", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def config(variant: str, upstream: str, redis: str) -> dict[str, Any]:
    backend_cache = {"cache": {"ttl": "60s"}} if variant.startswith("backend cache") else {}
    endpoint: dict[str, Any] = {
        "path": "/api/{id}",
        "backends": [
            {"name": f"b{i}", "upstream": "nginx", "path": "/json/{id}", "group": f"b{i}"}
            | backend_cache
            for i in range(3)
        ],
    }
    if variant.startswith("rate limit"):
        endpoint["rate_limit"] = {"rate": "1000000/s", "key": "ip"}
    if variant.startswith("aggregate cache"):
        endpoint["cache"] = {"ttl": "60s"}
    return {
        "version": 1,
        "server": {"backlog": 4096, "log_level": "warning"},
        "upstreams": {"nginx": {"url": upstream}},
        "state": {"redis": redis, "timeout": "1s"} if variant.endswith("Redis") else {},
        "endpoints": [endpoint],
    }


@contextmanager
def gateway(cfg: dict[str, Any]) -> Iterator[str]:
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        json.dump(cfg, fh)
    cmd = ["taskset", "-c", SUT_CORE, str(GATEWAY_PY), "-m", "gateway", "serve", fh.name,
           "--bind", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/api/7"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(fh.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    results: dict[str, Wrk] = {}
    with Nginx(core=int(LOAD_CORE)) as upstream, redis_server() as redis:
        for variant in VARIANTS:
            with gateway(config(variant, upstream, redis)) as url:
                wrk(url, 64, 2)  # warm up: connections, caches
                results[variant] = wrk(url, 64, args.seconds)
    plain = results["plain"].rps
    print("| Variant (3 backends, c=64) | req/s | vs plain | p50 ms | p99 ms | non-2xx |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, w in results.items():
        print(
            f"| {variant} | {w.rps:.0f} | {w.rps / plain:.2f}x | {w.p50_ms:.2f} | "
            f"{w.p99_ms:.2f} | {w.non_2xx + w.errors} |"
        )


if __name__ == "__main__":
    main()
