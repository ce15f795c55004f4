"""WebSocket relays: the memory of idle sockets held through the gateway, and a message's
round trip through it against direct.

    .venv/bin/python bench/websocket.py [--sockets 1000] [--messages 2000] [--rounds 10]
        [--big-messages 200] [--throughput-s 3] [--cycles 2] [--breakdown]

Processes (a 2-core machine):

- upstream: a trio-websocket ``serve_websocket`` echo server, pinned to core 1;
- gateway: ``python -m gateway serve CONFIG --bind 127.0.0.1:0``, one worker (in process),
  pinned to core 0: one passthrough endpoint ``/live`` to the upstream's ``/echo`` with
  ``websocket: {max_connections: 5000, idle_timeout: 10m}``;
- clients (trio-websocket), pinned to core 1 with the upstream. This script starts them
  all (it runs itself in the roles ``upstream``, ``holder`` and ``latency``).

1. **Memory.** VmRSS (``/proc/PID/status``) of the gateway, the upstream and the client
   before any socket, after 10 sockets opened and closed (``warm``), and while a client
   holds ``--sockets`` open and idle through the gateway. Per socket: (held - warm) / N, in
   KiB (and (held - start) / N, which includes what the first socket initialises). Then
   every socket must echo one message, all are closed, and the gateway's RSS, open fds and
   ``gateway_websockets_open`` after closing show anything left over. ``--cycles`` repeats
   open, hold, echo, close.
2. **Latency.** One client, one socket each way (direct to the upstream, and through the
   gateway), sequential round trips of a 32-byte text message, the two alternated in
   ``--rounds`` rounds so that drift hits both: p50/p90/p99 in microseconds; then a 64 KiB
   binary message (p50). The CPU time of the gateway's and the upstream's main threads
   (``/proc/PID/schedstat``) is divided by the round trips they served.
3. **Throughput.** 16 sockets each doing sequential round trips for ``--throughput-s``
   seconds, direct and gateway alternated twice: round trips per second.

``--breakdown`` runs the gateway under tracemalloc (a wrapper around the ``gateway``
command, here in the bench; its RSS is then not comparable) and prints where the memory
the held sockets added was allocated (by package and by source line), and which trio
tasks they added.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
MiB = 1024 * 1024
SMALL = "x" * 32
BIG = b"\xa5" * (64 * 1024)
WARM_SOCKETS = 10
OPEN_CONCURRENCY = 64
THROUGHPUT_SOCKETS = 16
GATEWAY_CORE, CLIENT_CORE = "0", "1"

BREAKDOWN_WRAPPER = r"""
import collections, signal, sys, tracemalloc

import trio

tracemalloc.start(1)
out, sockets = sys.argv.pop(1), int(sys.argv.pop(1))
snapshots = []


def task_names():
    names = collections.Counter()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        names[".".join(task.name.split(".")[-2:])] += 1
        todo += [t for nursery in task.child_nurseries for t in nursery.child_tasks]
    return names


def package(filename):
    tail = filename.split("site-packages/")[-1]
    if "/gateway/" in tail:
        return "gateway"
    if tail.startswith("/") or not tail:
        return "python (stdlib)"
    if tail.startswith("<attrs generated"):
        return tail.split()[-1].split(".")[0].strip(">")
    return tail.split("/")[0].removesuffix(".py")


def dump(signum, frame):
    snapshots.append((tracemalloc.take_snapshot(), task_names()))
    if len(snapshots) < 2:
        return
    (before, tasks_before), (after, tasks_after) = snapshots
    diff = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diff)
    blocks = sum(d.count_diff for d in diff)
    lines = [f"traced: {total / sockets / 1024:.1f} KiB, {blocks / sockets:.0f} blocks per socket"]
    by_package = collections.Counter()
    for d in diff:
        by_package[package(d.traceback[0].filename)] += d.size_diff
    lines.append("by package (where allocated), bytes per socket:")
    for name, size in by_package.most_common(8):
        lines.append(f"  {size / sockets:8.0f}  {name}")
    tasks = tasks_after - tasks_before
    lines.append(f"trio tasks per socket: {sum(tasks.values()) / sockets:.1f}")
    for name, count in tasks.most_common(12):
        lines.append(f"  {count / sockets:5.1f}  {name}")
    lines.append("by line, bytes and blocks per socket:")
    for d in diff[:15]:
        frame = d.traceback[0]
        where = f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        lines.append(f"  {d.size_diff / sockets:8.0f}  {d.count_diff / sockets:5.1f}  {where}")
    with open(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    snapshots.clear()


signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "gateway"
from gateway._entry import main

raise SystemExit(main())
"""


# --- /proc ---------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1))  # type: ignore[union-attr]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_ns(pid: int) -> int:
    """CPU time of the process's main thread, where trio runs."""
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[0])


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's open-file limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= wanted else wanted
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, new_hard))


def percentile(sorted_us: list[float], q: float) -> float:
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


async def read_line() -> str:
    line: str = await trio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


# --- role: upstream (echo server) ----------------------------------------------------


async def upstream_role() -> None:
    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: trio_websocket.serve_websocket(
                echo, "127.0.0.1", 0, None, max_message_size=8 * MiB, task_status=task_status
            )
        )
        print(server.port, flush=True)


# --- role: holder (opens N sockets and holds them idle) ------------------------------


async def holder_role(url: str, sockets: int) -> None:
    """Line protocol on stdin/stdout: ``ready``; ``open`` -> ``opened OK FAILED [error]``;
    ``echo`` -> ``echoed OK FAILED [error]``; ``close`` -> ``closed``."""
    open_ws: list[WebSocketConnection] = []
    errors: list[str] = []

    async def bounded(items: list[Any], fn: Callable[[Any], Awaitable[None]]) -> None:
        limit = trio.Semaphore(OPEN_CONCURRENCY)

        async def one(item: Any) -> None:
            async with limit:
                try:
                    await fn(item)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(one, item)

    async with trio.open_nursery() as readers:

        async def connect(_: int) -> None:
            with trio.fail_after(30):
                ws = await trio_websocket.connect_websocket_url(
                    readers, url, max_message_size=8 * MiB, message_queue_size=1
                )
            open_ws.append(ws)

        async def echo(ws: WebSocketConnection) -> None:
            with trio.fail_after(30):
                text = f"still here {id(ws)}"
                await ws.send_message(text)
                if await ws.get_message() != text:
                    raise AssertionError("echo differs")

        async def close(ws: WebSocketConnection) -> None:
            with trio.fail_after(30):
                await ws.aclose()

        print("ready", flush=True)
        assert await read_line() == "open"
        await bounded(list(range(sockets)), connect)
        print(f"opened {len(open_ws)} {len(errors)} {errors[:1]}", flush=True)
        assert await read_line() == "echo"
        errors.clear()
        await bounded(open_ws, echo)
        print(f"echoed {len(open_ws) - len(errors)} {len(errors)} {errors[:1]}", flush=True)
        assert await read_line() == "close"
        await bounded(open_ws, close)
        readers.cancel_scope.cancel()
    print("closed", flush=True)


# --- role: latency and throughput ----------------------------------------------------


async def latency_role(
    direct_url: str,
    gateway_url: str,
    gateway_pid: int,
    upstream_pid: int,
    messages: int,
    rounds: int,
    big_messages: int,
    throughput_s: float,
) -> None:
    urls = {"direct": direct_url, "gateway": gateway_url}
    result: dict[str, Any] = {}

    async def round_trips(ws: WebSocketConnection, message: str | bytes, n: int) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter_ns()
            await ws.send_message(message)
            await ws.get_message()
            samples.append((time.perf_counter_ns() - start) / 1000)
        return samples

    async with trio.open_nursery() as nursery:
        conns = {
            name: await trio_websocket.connect_websocket_url(
                nursery, url, max_message_size=8 * MiB, message_queue_size=1
            )
            for name, url in urls.items()
        }
        for ws in conns.values():  # warm-up
            await round_trips(ws, SMALL, 200)
            await round_trips(ws, BIG, 20)
        for label, message, total in (("small", SMALL, messages), ("big", BIG, big_messages)):
            samples: dict[str, list[float]] = {name: [] for name in urls}
            cpu = {name: [0, 0] for name in urls}  # gateway, upstream ns over that side's rounds
            for _ in range(rounds):
                for name, ws in conns.items():
                    g0, u0 = cpu_ns(gateway_pid), cpu_ns(upstream_pid)
                    samples[name] += await round_trips(ws, message, total // rounds)
                    cpu[name][0] += cpu_ns(gateway_pid) - g0
                    cpu[name][1] += cpu_ns(upstream_pid) - u0
            for name in urls:
                s = sorted(samples[name])
                result[f"{label}_{name}"] = {
                    "n": len(s),
                    "p50": percentile(s, 0.5),
                    "p90": percentile(s, 0.9),
                    "p99": percentile(s, 0.99),
                    "gateway_cpu_us": cpu[name][0] / len(s) / 1000,
                    "upstream_cpu_us": cpu[name][1] / len(s) / 1000,
                }
        for ws in conns.values():
            await ws.aclose()

        for order in range(4 if throughput_s > 0 else 0):
            name = ("direct", "gateway")[order % 2]
            async with trio.open_nursery() as load:
                socks = [
                    await trio_websocket.connect_websocket_url(load, urls[name])
                    for _ in range(THROUGHPUT_SOCKETS)
                ]
                count = 0
                g0 = cpu_ns(gateway_pid)
                started = time.perf_counter()
                deadline = trio.current_time() + throughput_s

                async def worker(ws: WebSocketConnection, deadline: float) -> None:
                    nonlocal count
                    while trio.current_time() < deadline:
                        await ws.send_message(SMALL)
                        await ws.get_message()
                        count += 1

                async with trio.open_nursery() as workers:
                    for ws in socks:
                        workers.start_soon(worker, ws, deadline)
                elapsed = time.perf_counter() - started
                gateway_cpu = cpu_ns(gateway_pid) - g0
                for ws in socks:
                    await ws.aclose()
            result.setdefault(f"throughput_{name}", []).append(
                {"per_s": count / elapsed, "gateway_cpu_us": gateway_cpu / count / 1000}
            )
        nursery.cancel_scope.cancel()
    print(json.dumps(result), flush=True)


# --- the run -------------------------------------------------------------------------


class Child:
    """A role of this script in its own process pinned to ``core``, spoken to by lines."""

    def __init__(self, core: str, role: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            ["taskset", "-c", core, PYTHON, __file__, role, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # taskset execs: the pid is the Python process's
        self.pid = self.proc.pid
        self.role = role

    def line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"role {self.role} exited: {self.proc.wait()}")
        return line.strip()

    def say(self, word: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        return self.line()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


def start_gateway(
    tmp: Path, upstream_port: int, breakdown: Path | None, sockets: int
) -> tuple[subprocess.Popen[bytes], str, Path]:
    config = {
        "version": 1,
        "server": {"log_level": "warning"},
        "upstreams": {"ws": {"url": f"http://127.0.0.1:{upstream_port}"}},
        "endpoints": [
            {
                "path": "/live",
                "passthrough": True,
                "websocket": {"max_connections": 5000, "idle_timeout": "10m"},
                "backends": [{"name": "live", "upstream": "ws", "path": "/echo"}],
            }
        ],
    }
    config_file = tmp / "websocket.yaml"
    config_file.write_text(json.dumps(config))
    out, log = tmp / "gateway.out", tmp / "gateway.log"
    command = [PYTHON, "-m", "gateway"]
    if breakdown is not None:
        wrapper = tmp / "traced_gateway.py"
        wrapper.write_text(BREAKDOWN_WRAPPER)
        command = [PYTHON, str(wrapper), str(breakdown), str(sockets)]
    with out.open("wb") as stdout, log.open("wb") as stderr:
        gateway = subprocess.Popen(
            ["taskset", "-c", GATEWAY_CORE, *command, "serve", str(config_file),
             "--bind", "127.0.0.1:0"],
            cwd=ROOT, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (match := re.search(r"serving .*?http://(127\.0\.0\.1:\d+)", out.read_text())):
        if gateway.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return gateway, match.group(1), log


def websockets_open(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/__gateway/metrics", timeout=5) as r:
        text = r.read().decode()
    counts = re.findall(r"^gateway_websockets_open\{[^}]*\} (\S+)$", text, re.M)
    return "+".join(counts) or "absent"


def settle() -> None:
    time.sleep(1.5)  # the last handshakes' garbage collected, allocations settled


def memory(
    args: argparse.Namespace,
    gateway_pid: int,
    upstream_pid: int,
    address: str,
    breakdown: Path | None,
) -> dict[str, Any]:
    url = f"ws://{address}/live"
    pids = {"gateway": gateway_pid, "upstream": upstream_pid}
    rss: dict[str, dict[str, int]] = {"start": {n: rss_kib(p) for n, p in pids.items()}}
    fds = {"start": open_fds(gateway_pid)}
    warm = Child(CLIENT_CORE, "holder", url, WARM_SOCKETS)
    warm.line()
    assert warm.say("open").startswith(f"opened {WARM_SOCKETS} 0"), "warm-up sockets failed"
    assert warm.say("echo").startswith(f"echoed {WARM_SOCKETS} 0"), "warm-up echo failed"
    warm.say("close")
    warm.stop()
    settle()
    rss["warm"] = {n: rss_kib(p) for n, p in pids.items()}
    fds["warm"] = open_fds(gateway_pid)
    if breakdown is not None:
        os.kill(gateway_pid, signal.SIGUSR1)
    cycles: list[dict[str, Any]] = []
    for _ in range(args.cycles):
        holder = Child(CLIENT_CORE, "holder", url, args.sockets)
        holder.line()
        client_before = rss_kib(holder.pid)
        opened = holder.say("open")
        settle()
        held = {n: rss_kib(p) for n, p in pids.items()}
        held["client"] = rss_kib(holder.pid) - client_before
        held_fds = open_fds(gateway_pid)
        relays = websockets_open(address)
        if breakdown is not None and not cycles:
            os.kill(gateway_pid, signal.SIGUSR1)
        echoed = holder.say("echo")
        holder.say("close")
        holder.stop()
        deadline = time.monotonic() + 20
        while open_fds(gateway_pid) > fds["warm"] and time.monotonic() < deadline:
            time.sleep(0.1)
        settle()
        cycles.append(
            {
                "opened": opened,
                "echoed": echoed,
                "held": held,
                "held_fds": held_fds,
                "relays_held": relays,
                "closed": {n: rss_kib(p) for n, p in pids.items()},
                "closed_fds": open_fds(gateway_pid),
                "relays_closed": websockets_open(address),
            }
        )
    return {"rss": rss, "fds": fds, "cycles": cycles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=2000, help="small round trips a side")
    parser.add_argument("--big-messages", type=int, default=200, help="64 KiB round trips a side")
    parser.add_argument("--rounds", type=int, default=10, help="alternations of the two sides")
    parser.add_argument("--throughput-s", type=float, default=3.0, help="0: skip")
    parser.add_argument("--cycles", type=int, default=2, help="open/hold/close cycles")
    parser.add_argument("--breakdown", action="store_true", help="gateway under tracemalloc")
    args = parser.parse_args()
    raise_fd_limit(4 * args.sockets + 1024)
    with open("/proc/cpuinfo") as fh:
        cpu = re.search(r"model name\s*:\s*(.*)", fh.read()).group(1)  # type: ignore[union-attr]
    print(f"# bench/websocket.py {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print()
    print(f"- command: {' '.join(sys.argv)}")
    print(
        f"- machine: {cpu}, {os.cpu_count()} cores; load average before: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"- Python {platform.python_version()}, trio {version('trio')}, "
        f"hypercorn {version('hypercorn')}, trio-websocket {version('trio-websocket')}, "
        f"wsproto {version('wsproto')}"
    )
    print(f"- gateway on core {GATEWAY_CORE}; upstream and clients on core {CLIENT_CORE}")
    print()
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp_name:
        tmp = Path(tmp_name)
        breakdown = tmp / "breakdown.txt" if args.breakdown else None
        upstream = Child(CLIENT_CORE, "upstream")
        gateway: subprocess.Popen[bytes] | None = None
        try:
            upstream_port = int(upstream.line())
            gateway, address, log = start_gateway(tmp, upstream_port, breakdown, args.sockets)
            mem = memory(args, gateway.pid, upstream.pid, address, breakdown)
            lat = Child(
                CLIENT_CORE,
                "latency",
                f"ws://127.0.0.1:{upstream_port}/echo",
                f"ws://{address}/live",
                gateway.pid,
                upstream.pid,
                args.messages,
                args.rounds,
                args.big_messages,
                args.throughput_s,
            )
            timing = json.loads(lat.line())
            lat.stop()
            end_rss, end_fds = rss_kib(gateway.pid), open_fds(gateway.pid)
            end_relays = websockets_open(address)
            log_lines_served = len(log.read_text().splitlines())
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(timeout=30)
            upstream.stop()
        report_memory(args, mem, end_rss, end_fds, end_relays)
        if breakdown is not None:
            print("\n## Where the gateway's memory per held socket is (tracemalloc)\n")
            print("```")
            print(breakdown.read_text() if breakdown.exists() else "(no snapshot written)")
            print("```")
        report_timing(args, timing)
        print(f"\nLoad average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        gateway_log = log.read_text().splitlines()
        print(
            f"\n## Gateway log (level warning): {log_lines_served} lines while serving, "
            f"{len(gateway_log) - log_lines_served} at the stop\n"
        )
        for line in gateway_log[:30]:
            print(f"    {line}")


def report_memory(
    args: argparse.Namespace, mem: dict[str, Any], end_rss: int, end_fds: int, end_relays: str
) -> None:
    n = args.sockets
    rss, fds = mem["rss"], mem["fds"]
    print(f"## {n} idle WebSockets held through the gateway (RSS in KiB)\n")
    print(
        "| cycle | process | start | warm | held | closed | per socket (held - warm) / N "
        "| per socket (held - start) / N |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, cycle in enumerate(mem["cycles"], 1):
        for name in ("gateway", "upstream"):
            start, warm = rss["start"][name], rss["warm"][name]
            held, closed = cycle["held"][name], cycle["closed"][name]
            print(
                f"| {i} | {name} | {start} | {warm} | {held} | {closed} "
                f"| {(held - warm) / n:.1f} | {(held - start) / n:.1f} |"
            )
        print(
            f"| {i} | client (trio-websocket) | | | +{cycle['held']['client']} | "
            f"| {cycle['held']['client'] / n:.1f} | |"
        )
    print()
    for i, cycle in enumerate(mem["cycles"], 1):
        print(
            f"- cycle {i}: {cycle['opened']}; {cycle['echoed']}; gateway fds start "
            f"{fds['start']}, warm {fds['warm']}, held {cycle['held_fds']}, closed "
            f"{cycle['closed_fds']}; gateway_websockets_open held {cycle['relays_held']}, "
            f"closed {cycle['relays_closed']}"
        )
    print(
        f"- after the latency and throughput runs: gateway RSS {end_rss} KiB, fds {end_fds}, "
        f"gateway_websockets_open {end_relays}"
    )


def report_timing(args: argparse.Namespace, timing: dict[str, Any]) -> None:
    print(
        f"\n## Round trip of one message, one socket ({args.rounds} rounds alternating "
        "direct and gateway; microseconds)\n"
    )
    print(
        "| message | path | round trips | p50 | p90 | p99 | gateway CPU / round trip "
        "| upstream CPU / round trip |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, what in (("small", "32 B text"), ("big", "64 KiB binary")):
        for name in ("direct", "gateway"):
            r = timing[f"{label}_{name}"]
            print(
                f"| {what} | {name} | {r['n']} | {r['p50']:.0f} | {r['p90']:.0f} "
                f"| {r['p99']:.0f} | {r['gateway_cpu_us']:.0f} | {r['upstream_cpu_us']:.0f} |"
            )
        d, g = timing[f"{label}_direct"], timing[f"{label}_gateway"]
        print(
            f"| {what} | gateway - direct | | {g['p50'] - d['p50']:+.0f} "
            f"| {g['p90'] - d['p90']:+.0f} | {g['p99'] - d['p99']:+.0f} | | |"
        )
        print(
            f"| {what} | gateway / direct | | {g['p50'] / d['p50']:.2f}x "
            f"| {g['p90'] / d['p90']:.2f}x | {g['p99'] / d['p99']:.2f}x | | |"
        )
    if "throughput_direct" in timing:
        print(
            f"\n## Throughput: {THROUGHPUT_SOCKETS} sockets, sequential round trips of 32 B, "
            f"{args.throughput_s:g} s each, alternated twice\n"
        )
        print("| path | round trips/s | gateway CPU us / round trip |")
        print("| --- | --- | --- |")
        for name in ("direct", "gateway"):
            runs = timing[f"throughput_{name}"]
            rates = " / ".join(f"{r['per_s']:.0f}" for r in runs)
            cpus = " / ".join(f"{r['gateway_cpu_us']:.0f}" for r in runs)
            print(f"| {name} | {rates} | {cpus} |")
        d = max(r["per_s"] for r in timing["throughput_direct"])
        g = max(r["per_s"] for r in timing["throughput_gateway"])
        print(f"\nBest gateway / best direct: {g / d:.2f}x")


async def latency_from_argv(argv: list[str]) -> None:
    direct_url, gateway_url, *counts, throughput_s = argv
    gateway_pid, upstream_pid, messages, rounds, big_messages = (int(n) for n in counts)
    await latency_role(
        direct_url,
        gateway_url,
        gateway_pid,
        upstream_pid,
        messages,
        rounds,
        big_messages,
        float(throughput_s),
    )


ROLES: dict[str, Callable[[list[str]], Awaitable[None]]] = {
    "upstream": lambda argv: upstream_role(),
    "holder": lambda argv: holder_role(argv[0], int(argv[1])),
    "latency": latency_from_argv,
}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ROLES:
        role, argv = sys.argv[1], sys.argv[2:]
        trio.run(ROLES[role], argv)
    else:
        main()
