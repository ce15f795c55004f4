"""Per-call cost of the upstream client, sequential and concurrent, against nginx.

    .venv/bin/python bench/transport.py [--calls 3000]

Runs in one trio process pinned to core 0; nginx (no delay) is pinned to core 1.
Compared in the same run:

- ``httpx default``: a stock ``httpx.AsyncClient`` (httpcore's pool, default limits);
- ``httpx + gateway transport``: ``client.send`` of a prebuilt request over
  ``gateway.GatewayTransport``;
- ``gateway transport direct``: ``GatewayTransport.send`` with the request as origin,
  target and header lines, as the gateway's aggregated hot path calls it (no httpx
  objects).

Reported: microseconds of wall time per call (total time / calls) at 1 and 100
concurrent calls, and the ratio between the two (1.0 = flat); then the client process's
CPU time per call (``time.process_time``), which a busy shared machine disturbs less
than wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstream_nginx import Nginx

from gateway import GatewayTransport


async def measure(
    call: Callable[[], Awaitable[None]], calls: int, concurrency: int
) -> tuple[float, float]:
    """Microseconds per call: wall time, and this process's CPU time."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start = time.perf_counter()
    cpu_start = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    cpu = time.process_time() - cpu_start
    return (time.perf_counter() - start) / calls * 1e6, cpu / calls * 1e6


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {0})
    with Nginx(core=1) as upstream:
        url = upstream + "/json/x"
        stock = httpx.AsyncClient(trust_env=False)
        transport = GatewayTransport()
        ours = httpx.AsyncClient(transport=transport, trust_env=False)

        async def call_stock() -> None:
            r = await stock.get(url)
            assert r.status_code == 200

        async def call_send() -> None:
            r = await ours.send(httpx.Request("GET", url), stream=True)
            await r.aread()
            await r.aclose()

        parsed = httpx.URL(url)
        key = (parsed.scheme, parsed.host, parsed.port or 80, None)  # no client certificate
        lines = [(b"Host", parsed.netloc)]

        async def call_direct() -> None:
            r = await transport.send(key, "GET", parsed.raw_path, lines, None)
            assert r.status == 200
            if r.stream.complete_body() is None:
                async for _ in r.stream:
                    pass
            await r.aclose()

        variants = {
            "httpx default": call_stock,
            "httpx + gateway transport": call_send,
            "gateway transport direct": call_direct,
        }
        rows = []
        cpu_rows = []
        for name, call in variants.items():
            await measure(call, 200, 10)  # warm up, open connections
            one, one_cpu = await measure(call, args.calls, 1)
            hundred, hundred_cpu = await measure(call, args.calls, 100)
            rows.append((name, one, hundred))
            cpu_rows.append((name, one_cpu, hundred_cpu))
            print(
                f"{name:28} {one:7.0f} us  {hundred:7.0f} us"
                f"  (cpu {one_cpu:5.0f} / {hundred_cpu:5.0f} us)",
                flush=True,
            )
        await stock.aclose()
        await ours.aclose()

    print()
    print("| client | us/call, 1 at a time | us/call, 100 concurrent | 100 / 1 |")
    print("| --- | --- | --- | --- |")
    for name, one, hundred in rows:
        print(f"| {name} | {one:.0f} | {hundred:.0f} | {hundred / one:.2f} |")
    print()
    print("| client | CPU us/call, 1 at a time | CPU us/call, 100 concurrent |")
    print("| --- | --- | --- |")
    for name, one, hundred in cpu_rows:
        print(f"| {name} | {one:.0f} | {hundred:.0f} |")
    base = rows[0]
    print()
    for name, one, hundred in rows[1:]:
        print(f"{name}: {base[1] / one:.1f}x faster sequential, {base[2] / hundred:.1f}x at 100")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    trio.run(main, parser.parse_args())
