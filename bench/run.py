"""The benchmark suite: the gateway against the common alternatives, in one run.

    bench/run            # installs what it needs, then runs this
    bench/.venv/bin/python bench/run.py [--duration 5] [--quick]

Every system under test (SUT) runs as one process (single worker) pinned to core 0; nginx
(the upstream, with the echo module for delays) and wrk (the load generator) share core 1.
Peers, all answering ``GET /api/{id}`` by calling N upstream endpoints concurrently and
merging the JSON:

- ``hello``: a raw ASGI hello world on hypercorn's trio worker (the ceiling of our stack;
  it makes no upstream call);
- ``fastapi``: FastAPI on uvicorn, one shared ``httpx.AsyncClient``, ``asyncio.gather``;
- ``aiohttp``: aiohttp server, one shared ``ClientSession``, uvloop;
- ``gateway``: this project, ``gateway serve`` with a generated config.

Results are printed as one table of ratios (gateway / peer) plus the raw numbers, and the
targets of the benchmark issue are checked. The gateway is also measured with one worker
against two (``gateway serve --workers 2`` on both cores, which it then shares with nginx
and wrk: reported, no target).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from upstream_nginx import Nginx, free_port  # noqa: E402

GATEWAY_PY = ROOT / ".venv" / "bin" / "python"
PEERS_PY = HERE / ".venv" / "bin" / "python"
SUT_CORE, LOAD_CORE = "0", "1"
PEER_NAMES = ("hello", "fastapi", "aiohttp", "gateway")


@dataclass
class Wrk:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    requests: int


@dataclass
class Results:
    throughput: dict[tuple[str, int, int], Wrk] = field(default_factory=dict)
    latency: dict[str, tuple[int, Wrk, Wrk]] = field(default_factory=dict)
    hung: dict[str, Wrk] = field(default_factory=dict)
    memory_kib: dict[str, float] = field(default_factory=dict)
    workers: dict[int, Wrk] = field(default_factory=dict)  # gateway --workers N, c=64


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, connections: int, duration_s: float, headers: Sequence[str] = ()) -> Wrk:
    cmd = [
        "taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s",
        "--latency", "--timeout", "10s", *(a for h in headers for a in ("-H", h)), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Wrk(rps, p50, p99, errors, non_2xx, requests)


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def sut(
    peer: str,
    upstream: str,
    backends: int,
    path: str,
    *,
    hang: bool = False,
    workers: int = 1,
) -> Iterator[tuple[str, int]]:
    """Start one system under test; yields (URL to load, pid). ``workers`` > 1 (the
    gateway only) runs ``gateway serve --workers N`` on every core."""
    port = free_port()
    env = {
        **os.environ,
        "UPSTREAM": upstream,
        "BACKENDS": str(backends),
        "UPSTREAM_PATH": path,
        "HANG_FIRST": "1" if hang else "0",
        "DEADLINE_S": "0.2" if hang else "5",
        "PORT": str(port),
    }
    cwd = HERE / "peers"
    config_file = None
    if peer == "hello":
        cmd = [str(GATEWAY_PY), "-m", "hypercorn", "-k", "trio", "-w", "0", "--backlog", "4096",
               "-b", f"127.0.0.1:{port}", "hello_asgi:app"]  # fmt: skip
    elif peer == "fastapi":
        cmd = [str(PEERS_PY), "-m", "uvicorn", "fastapi_httpx:app", "--port", str(port),
               "--backlog", "4096", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    elif peer == "aiohttp":
        cmd = [str(PEERS_PY), "aiohttp_session.py"]
    else:
        config = {
            "version": 1,
            # no access log: the peers write none either
            "server": {"backlog": 4096, "log_level": "warning"},
            "defaults": {"timeout": "2s", "deadline": "200ms" if hang else "5s"},
            "upstreams": {"nginx": {"url": upstream}},
            "endpoints": [
                {
                    "path": "/api/{id}",
                    "backends": [
                        {
                            "name": f"b{i}",
                            "upstream": "nginx",
                            "path": ("/hang/" if hang and i == 0 else path) + "{id}",
                            "group": f"b{i}",
                        }
                        for i in range(backends)
                    ],
                }
            ],
        }
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            json.dump(config, fh)
        config_file = fh.name
        cmd = [str(GATEWAY_PY), "-m", "gateway", "serve", fh.name, "--bind", f"127.0.0.1:{port}"]
        if workers > 1:
            cmd += ["--workers", str(workers)]
    cores = SUT_CORE if workers == 1 else f"{SUT_CORE},{LOAD_CORE}"
    proc = subprocess.Popen(
        ["taskset", "-c", cores, *cmd],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/api/7", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if config_file:
            os.unlink(config_file)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1))  # type: ignore[union-attr]


def peak_rss_kib(pid: int, load: Callable[[], object]) -> int:
    """The process's highest RSS while ``load()`` runs, sampled every 50 ms."""
    peak = rss_kib(pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        load()
    finally:
        stop.set()
        sampler.join()
    return peak


def run(args: argparse.Namespace) -> Results:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1000 clients x 4 sockets
    results = Results()
    d = args.duration
    with Nginx(core=int(LOAD_CORE)) as upstream:
        # 1. throughput: 1, 3, 16 backends with no delay
        for backends in args.backends:
            for peer in PEER_NAMES:
                if peer == "hello" and backends != args.backends[0]:
                    continue  # no upstream calls: measured once
                with sut(peer, upstream, backends, "/json/") as (url, _):
                    wrk(url, 16, 1)  # warm-up
                    for c in args.connections:
                        w = wrk(url, c, d)
                        results.throughput[(peer, backends, c)] = w
                        print(f"throughput {peer:8} n={backends:<2} c={c:<3} {w.rps:9.1f} req/s"
                              f" errors={w.errors} non2xx={w.non_2xx}", flush=True)  # fmt: skip

        # 2. latency over a 50 ms upstream, 3 backends, at half of each peer's peak
        for peer in PEER_NAMES[1:]:
            with sut(peer, upstream, 3, "/delay50/") as (url, _):
                wrk(url, 16, 1)
                peak = wrk(url, 256, d).rps
                if peak < 1:
                    print(f"latency    {peer:8} no request completed at c=256", flush=True)
                    continue
                # closed loop: connections = rate x latency (Little's law); measured after
                # a pause, in steady state, not in the wake of the overload run above
                c = max(1, round(0.5 * peak * 0.050))
                time.sleep(3)
                w = wrk(url, c, d)
                # the upstream's own latency at the same upstream concurrency
                base = wrk(upstream + "/delay50/x", 3 * c, d)
                results.latency[peer] = (c, w, base)
                print(f"latency    {peer:8} peak={peak:.0f} c={c} p50={w.p50_ms:.2f}ms "
                      f"p99={w.p99_ms:.2f}ms rps={w.rps:.0f}", flush=True)  # fmt: skip

        # 3. one hung backend (of 3) and a 200 ms deadline
        for peer in PEER_NAMES[1:]:
            with sut(peer, upstream, 3, "/json/", hang=True) as (url, _):
                w = wrk(url, 8, d)
                results.hung[peer] = w
                print(f"hung       {peer:8} p50={w.p50_ms:.1f}ms p99={w.p99_ms:.1f}ms "
                      f"non2xx={w.non_2xx} errors={w.errors}", flush=True)  # fmt: skip

        # 4. one worker against two (on 2 cores the workers share them with nginx and wrk:
        # reported, no target)
        for workers in (1, 2):
            with sut("gateway", upstream, 3, "/json/", workers=workers) as (url, _):
                wrk(url, 16, 1)
                w = wrk(url, 64, d)
                results.workers[workers] = w
                print(f"workers    gateway  n=3  c=64  workers={workers} {w.rps:9.1f} req/s"
                      f" errors={w.errors} non2xx={w.non_2xx}", flush=True)  # fmt: skip

        # 5. memory per 1000 in-flight requests, 3 backends answering after 1 s; hello
        # sleeps 1 s instead: what hypercorn and trio alone hold per request in flight
        for peer in PEER_NAMES:
            with sut(peer, upstream, 3, "/delay1s/") as (url, pid):
                if peer == "hello":
                    url = url.replace("/api/", "/sleep/")
                wrk(url, 50, 2)
                time.sleep(0.5)
                idle = rss_kib(pid)
                peak = peak_rss_kib(pid, lambda url=url: wrk(url, 1000, max(d, 4)))
                results.memory_kib[peer] = (peak - idle) / 1000
                print(f"memory     {peer:8} idle={idle} KiB peak={peak} KiB "
                      f"-> {(peak - idle) / 1000:.1f} KiB per in-flight request", flush=True)  # fmt: skip
    return results


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "inf"


def report(results: Results, args: argparse.Namespace) -> str:
    lines = []
    t = results.throughput
    c_mid = 64 if 64 in args.connections else args.connections[0]
    hello_rps = {c: t[("hello", args.backends[0], c)].rps for c in args.connections}
    lines.append("## Throughput, no upstream delay (req/s; ratio = gateway / peer)")
    lines.append("")
    header = "| backends | c | hello | fastapi | aiohttp | gateway | vs hello | vs fastapi | vs aiohttp |"
    lines += [header, "|" + " --- |" * 9]
    for n in args.backends:
        for c in args.connections:
            g = t[("gateway", n, c)].rps
            f = t[("fastapi", n, c)].rps
            a = t[("aiohttp", n, c)].rps
            h = hello_rps[c]
            lines.append(
                f"| {n} | {c} | {h:.0f} | {f:.1f} | {a:.0f} | {g:.0f} | "
                f"{ratio(g, h)} | {ratio(g, f)} | {ratio(g, a)} |"
            )
    lines.append("")
    lines.append("## 3 backends at 50 ms, half of peak load (latency over the upstream's own)")
    lines.append("")
    lines.append(
        "The upstream's own p50/p99 is measured right after, with nginx loaded by 3 x c "
        "connections (the same upstream concurrency); the overhead is the difference."
    )
    lines += [
        "",
        "| peer | connections | req/s | p50 | p99 | nginx p50 / p99 | p50 over | p99 over |",
        "|" + " --- |" * 8,
    ]
    for peer, (c, w, base) in results.latency.items():
        lines.append(
            f"| {peer} | {c} | {w.rps:.0f} | {w.p50_ms:.2f} ms | {w.p99_ms:.2f} ms | "
            f"{base.p50_ms:.2f} / {base.p99_ms:.2f} ms | {w.p50_ms - base.p50_ms:.2f} ms | "
            f"{w.p99_ms - base.p99_ms:.2f} ms |"
        )
    lines.append("")
    lines.append("## One hung backend of 3, 200 ms deadline (response time)")
    lines += ["", "| peer | p50 | p99 | non-2xx | socket errors |", "|" + " --- |" * 5]
    for peer, w in results.hung.items():
        lines.append(
            f"| {peer} | {w.p50_ms:.1f} ms | {w.p99_ms:.1f} ms | {w.non_2xx} | {w.errors} |"
        )
    lines.append("")
    if results.workers:
        lines.append("## Gateway workers (3 backends, c=64; the workers share the 2 cores with")
        lines.append("nginx and wrk, so this shows the cost of sharing, not scaling)")
        lines.append("")
        lines.append("| workers | req/s | p50 | p99 |")
        lines.append("| --- | --- | --- | --- |")
        for n, w in results.workers.items():
            lines.append(f"| {n} | {w.rps:.0f} | {w.p50_ms:.2f} ms | {w.p99_ms:.2f} ms |")
        lines.append("")
    lines.append("## Memory per in-flight request (3 backends at 1 s, 1000 connections)")
    lines += ["", "| peer | KiB per request |", "| --- | --- |"]
    for peer, kib in results.memory_kib.items():
        label = "hello (server stack alone: sleeps 1 s, no upstream)" if peer == "hello" else peer
        lines.append(f"| {label} | {kib:.1f} |")
    lines.append("")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    g3 = t[("gateway", 3, c_mid)].rps
    checks = [
        (f"3 backends c={c_mid}: >= 0.5x hello", g3 / hello_rps[c_mid], 0.5),
        (f"3 backends c={c_mid}: >= 6x fastapi", g3 / max(t[("fastapi", 3, c_mid)].rps, 1e-9), 6.0),
        (f"3 backends c={c_mid}: >= 0.5x aiohttp", g3 / t[("aiohttp", 3, c_mid)].rps, 0.5),
    ]
    lines.append("## Targets")
    lines.append("")
    for name, value, floor in checks:
        lines.append(f"- {name}: {value:.2f}x, {verdict(value >= floor)}")
    if 16 in args.connections and 256 in args.connections:
        for n in args.backends:
            kept = t[("gateway", n, 256)].rps / t[("gateway", n, 16)].rps
            lines.append(f"- {n} backends: c=256 >= 0.9x c=16: {kept:.2f}x, {verdict(kept >= 0.9)}")
    if "gateway" in results.latency:
        _, w, base = results.latency["gateway"]
        p50, p99 = w.p50_ms - base.p50_ms, w.p99_ms - base.p99_ms
        lines.append(f"- latency over the upstream, p50 < 2 ms: {p50:.2f} ms, {verdict(p50 < 2)}")
        lines.append(f"- latency over the upstream, p99 < 10 ms: {p99:.2f} ms, {verdict(p99 < 10)}")
    if "gateway" in results.hung:
        w = results.hung["gateway"]
        lines.append(
            f"- hung backend, response by 205 ms at p99: {w.p99_ms:.1f} ms, {verdict(w.p99_ms <= 205)}"
        )
    if "gateway" in results.memory_kib:
        kib = results.memory_kib["gateway"]
        lines.append(f"- under 30 KiB per in-flight request: {kib:.1f} KiB, {verdict(kib < 30)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="3 backends, c=16/64/256, 3 s runs")
    args = parser.parse_args()
    args.backends = [3] if args.quick else [1, 3, 16]
    args.connections = [16, 64, 256]
    if args.quick:
        args.duration = 3.0
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        sys.exit("the suite needs 2 cores: the SUT and the load generator are pinned apart")
    results = run(args)
    print()
    print(f"# Benchmark run {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores")
    print()
    print(report(results, args))


if __name__ == "__main__":
    main()
