"""Throughput of a 20 KiB merged body with and without response compression.

    bench/.venv/bin/python bench/compression.py [--rounds 3] [--duration 5] [--connections 16 64]

(``bench/run`` installs nginx, wrk and the venvs; any Python with the gateway's venv next
to it runs this.) nginx (core 1) serves three JSON documents of about 7 KiB as static
files; the gateway (one worker, core 0) merges them into one body of about 20 KiB under
``/api/{id}``; wrk (core 1) loads it with one ``Accept-Encoding`` per variant:

- ``identity``: no Accept-Encoding (the gateway answers uncompressed);
- ``br``, ``zstd``, ``gzip``: each coding at the gateway's default level;
- ``br 11``: brotli at the library's default quality, 11 (a second gateway, with
  ``levels: {br: 11}``).

Rounds rotate the order of the variants, so a machine that drifts slower over the run
does not penalise one of them. Reported: the median req/s of each variant, the gateway
process's CPU time per request (user + system, from /proc), each as the median of the
per-round ratios to identity (a round measures every variant within a minute or so, so
the ratio is less disturbed by a shared machine than the figures are), the median p50/p99
latency, and the bytes of one answer on the wire and the share saved.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
from ab import cpu_s  # noqa: E402
from upstream_nginx import Nginx, free_port  # noqa: E402

from gateway._rules.encoding import DEFAULT_LEVELS  # noqa: E402

PARTS = 3
PART_BYTES = 7550


def part(seed: int) -> bytes:
    """One backend's JSON document of about PART_BYTES."""
    rng = random.Random(seed)
    tiers = ("gold", "silver", "bronze")
    records = []
    while len(json.dumps(records)) < PART_BYTES - 100:
        records.append(
            {
                "id": rng.randrange(10**6),
                "name": f"customer {rng.randrange(10**4)}",
                "email": f"user{rng.randrange(10**6)}@example.com",
                "tier": rng.choice(tiers),
                "balance": round(rng.uniform(0, 10000), 2),
                "orders": [rng.randrange(10**7) for _ in range(rng.randrange(0, 4))],
            }
        )
    return json.dumps({"records": records}).encode()


@contextmanager
def gateway(upstream: str, levels: dict[str, int] | None = None) -> Iterator[tuple[str, int]]:
    """``gateway serve`` pinned to the SUT core; yields (URL, pid)."""
    port = free_port()
    defaults: dict[str, object] = {"timeout": "2s", "deadline": "5s"}
    if levels:
        defaults["compression"] = {"levels": levels}
    config = {
        "version": 1,
        "server": {"backlog": 4096, "log_level": "warning"},
        "defaults": defaults,
        "upstreams": {"nginx": {"url": upstream}},
        "endpoints": [
            {
                "path": "/api/{id}",
                "backends": [
                    {"name": f"b{i}", "upstream": "nginx", "path": f"/files/part{i}.json"}
                    | {"group": f"b{i}"}
                    for i in range(PARTS)
                ],
            }
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        json.dump(config, fh)
    cmd = [str(run.GATEWAY_PY), "-m", "gateway", "serve", fh.name, "--bind", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        ["taskset", "-c", run.SUT_CORE, *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run.wait_port(port)
        yield f"http://127.0.0.1:{port}/api/7", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(fh.name)


def wire_bytes(url: str, accept: str | None) -> tuple[int, str | None]:
    """The size of one answer's body as sent, and its Content-Encoding."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": accept} if accept else {})
    with urllib.request.urlopen(request) as response:
        return len(response.read()), response.headers.get("Content-Encoding")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[64])
    args = parser.parse_args()
    variants: list[tuple[str, str | None, bool]] = [  # name, Accept-Encoding, brotli 11
        ("identity", None, False),
        (f"br {DEFAULT_LEVELS['br']}", "br", False),
        (f"zstd {DEFAULT_LEVELS['zstd']}", "zstd", False),
        (f"gzip {DEFAULT_LEVELS['gzip']}", "gzip", False),
        ("br 11", "br", True),
    ]
    rps: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    p50: dict[tuple[str, int], list[float]] = {}
    p99: dict[tuple[str, int], list[float]] = {}
    sizes: dict[str, tuple[int, str | None]] = {}
    nginx = Nginx(core=int(run.LOAD_CORE))
    with nginx as upstream:
        files = Path(nginx.prefix) / "files"
        files.mkdir()
        os.chmod(nginx.prefix, 0o755)  # nginx's workers run as another user (nobody)
        for i in range(PARTS):
            (files / f"part{i}.json").write_bytes(part(i))
        for round_ in range(args.rounds):
            shift = round_ % len(variants)
            order = variants[shift:] + variants[:shift]
            for name, accept, br11 in order:
                with gateway(upstream, {"br": 11} if br11 else None) as (url, pid):
                    sizes.setdefault(name, wire_bytes(url, accept))
                    headers = [f"Accept-Encoding: {accept}"] if accept else []
                    run.wrk(url, 16, 1, headers)  # warm-up
                    for c in args.connections:
                        before = cpu_s(pid)
                        w = run.wrk(url, c, args.duration, headers)
                        assert w.non_2xx == 0 and w.errors == 0, (name, w)
                        us = (cpu_s(pid) - before) / w.requests * 1e6
                        for table, value in (
                            (rps, w.rps),
                            (cpu, us),
                            (p50, w.p50_ms),
                            (p99, w.p99_ms),
                        ):
                            table.setdefault((name, c), []).append(value)
                        print(f"round {round_} {name:9} c={c} {w.rps:7.0f} req/s {us:5.0f} CPU us/req"
                              f" p50 {w.p50_ms:.1f} ms p99 {w.p99_ms:.1f} ms", flush=True)  # fmt: skip
    identity_bytes = sizes["identity"][0]
    print()
    print(f"Merged body: {identity_bytes} bytes; {args.rounds} rounds of {args.duration:g} s,"
          f" {time.strftime('%Y-%m-%d %H:%M')}. Ratios are the median of each round's ratio"
          " (min to max in parentheses).")  # fmt: skip
    print()
    print(
        "| variant | c | req/s | vs identity | CPU us/req | vs identity | p50 | p99 |"
        " bytes on the wire | saved |"
    )
    print("|" + " --- |" * 10)
    for c in args.connections:
        for name, _, _ in variants:
            size, coding = sizes[name]
            row = [name, str(c)]
            for table in (rps, cpu):
                mine, base = table[(name, c)], table[("identity", c)]
                ratios = [m / b for m, b in zip(mine, base, strict=True)]
                row.append(f"{statistics.median(mine):.0f}")
                row.append(
                    f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                )
            row.append(f"{statistics.median(p50[(name, c)]):.1f} ms")
            row.append(f"{statistics.median(p99[(name, c)]):.1f} ms")
            row.append(f"{size} ({coding or 'identity'})")
            row.append(f"{1 - size / identity_bytes:.0%}")
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
