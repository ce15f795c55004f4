"""Soak run: minutes of steady load at ~80% of peak with one upstream flapping.

    .venv/bin/python bench/soak.py [--minutes 10]

The gateway (one worker, pinned to core 0) serves an endpoint with two backends:
``stable`` (nginx, required) and ``flappy`` (a Python upstream that alternates between
healthy and failing every few seconds: 503s, then resets, then hangs; optional, with
retries, a circuit breaker and a default). wrk (core 1) first finds the peak, then paces
its requests (a Lua ``delay``) to about 80% of it for the soak.

Checked: every answer is 200 (the flapping backend only ever makes responses
incomplete, never fails them); the gateway's RSS, open file descriptors stay flat
(sampled every 10 s); the breaker opened and closed as the upstream flapped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from upstream_nginx import Nginx, free_port  # noqa: E402

FLAPPY = r"""
import sys, time, trio
sys.path.insert(0, "{tests}")
from upstream import Reply, serve_upstream

PHASES = [None, "503", None, "reset", None, "hang"]

async def handler(req):
    phase = PHASES[int(time.monotonic() / {period}) % len(PHASES)]
    if phase == "503":
        return Reply(status=503)
    if phase in ("reset", "hang"):
        return Reply(fault=phase)
    return Reply(json={{"flappy": True}})

async def main():
    async with trio.open_nursery() as n:
        up = await n.start(serve_upstream, handler)
        print(up.url, flush=True)

trio.run(main)
"""


def status_of(pid: int) -> tuple[int, int]:
    """(RSS KiB, open fds) of a process."""
    with open(f"/proc/{pid}/status") as fh:
        rss = int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1))  # type: ignore[union-attr]
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--period", type=float, default=5.0, help="seconds per flap phase")
    args = parser.parse_args()
    py = str(ROOT / ".venv" / "bin" / "python")
    with Nginx(core=1) as stable, tempfile.TemporaryDirectory() as tmp:
        flappy_src = Path(tmp, "flappy.py")
        flappy_src.write_text(FLAPPY.format(tests=ROOT / "tests", period=args.period))
        flappy = subprocess.Popen(
            ["taskset", "-c", "1", py, str(flappy_src)], stdout=subprocess.PIPE, text=True
        )
        assert flappy.stdout is not None
        flappy_url = flappy.stdout.readline().strip()
        config = {
            "version": 1,
            "server": {"backlog": 4096, "log_level": "warning"},
            "defaults": {"timeout": "300ms", "deadline": "500ms"},
            "upstreams": {
                "stable": {"url": stable},
                "flappy": {
                    "url": flappy_url,
                    "timeout": "200ms",
                    "retries": {"attempts": 1, "backoff": "10ms"},
                    "circuit_breaker": {
                        "consecutive_failures": 5,
                        "min_requests": 20,
                        "open_for": "1s",
                    },
                },
            },
            "endpoints": [
                {
                    "path": "/api/{id}",
                    "backends": [
                        {
                            "name": "stable",
                            "upstream": "stable",
                            "path": "/json/{id}",
                            "required": True,
                        },
                        {
                            "name": "flappy",
                            "upstream": "flappy",
                            "path": "/f/{id}",
                            "default": None,
                        },
                    ],
                }
            ],
        }
        config_file = Path(tmp, "soak.yaml")
        config_file.write_text(json.dumps(config))
        port = free_port()
        gateway = subprocess.Popen(
            ["taskset", "-c", "0", py, "-m", "gateway", "serve", str(config_file),
             "--bind", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(2)
        url = f"http://127.0.0.1:{port}/api/7"
        try:
            out = subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", "-c32", "-d10s", url],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            peak = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            target = 0.8 * peak
            connections = 16
            # each connection waits this long between requests: 16 / (latency + delay) = target
            delay_ms = max(0.0, connections / target * 1000 - 2)
            script = Path(tmp, "pace.lua")
            script.write_text(f"function delay() return {delay_ms:.1f} end\n")
            # calibrate: closed-loop pacing is approximate, so scale the connections once
            out = subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", "-d5s", "-s",
                 str(script), url],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            got = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            connections = max(1, round(connections * target / got))
            samples = [status_of(gateway.pid)]
            wrk = subprocess.Popen(
                ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}",
                 f"-d{int(args.minutes * 60)}s", "-s", str(script), url],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            while wrk.poll() is None:
                time.sleep(10)
                samples.append(status_of(gateway.pid))
            out = wrk.stdout.read() if wrk.stdout else ""
            upstreams = subprocess.run(
                ["curl", "-s", f"http://127.0.0.1:{port}/__gateway/upstreams"],
                capture_output=True, text=True,
            ).stdout  # fmt: skip
        finally:
            gateway.terminate()
            gateway.wait()
            flappy.terminate()
            flappy.wait()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    rss = [s[0] for s in samples]
    fds = [s[1] for s in samples]
    breaker = json.loads(upstreams)["flappy"]["circuit_breaker"]
    print(
        f"# Soak {time.strftime('%Y-%m-%d %H:%M')}: {args.minutes:g} min, flap period {args.period:g}s"
    )
    print()
    print(f"- peak {peak:.0f} req/s; soak at {rate:.0f} req/s ({rate / peak:.0%} of peak)")
    print(f"- {requests} requests: {non_2xx} non-2xx, {errors} socket errors")
    print(f"- gateway RSS KiB: start {rss[0]}, after warm-up {rss[min(3, len(rss) - 1)]}, "
          f"end {rss[-1]}, max {max(rss)}")  # fmt: skip
    print(f"- gateway open fds: start {fds[0]}, max {max(fds)}, end {fds[-1]}")
    print(f"- flappy breaker: opened {breaker['opened_total']} times, "
          f"rejected {breaker['rejected_total']} calls")  # fmt: skip


if __name__ == "__main__":
    main()
