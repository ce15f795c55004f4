"""An interleaved A/B of two gateway checkouts on the hot path (3 backends, no delay).

    bench/.venv/bin/python bench/ab.py /path/to/other/checkout [--rounds 5] [--duration 5]

The other checkout needs its own ``.venv`` (``python3 -m venv .venv && .venv/bin/pip
install -e .``). Both gateways serve the config of ``bench/run.py``, one at a time, pinned
to core 0; nginx and wrk share core 1 (the same nginx for every run). Rounds alternate
A, B, B, A, ... so a machine that drifts slower over the run penalises neither side;
reported per connection count: the median req/s of each side, and the gateway process's
CPU time per request (user + system, from /proc), which a shared, drifting machine
disturbs far less than wall-clock throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
from upstream_nginx import Nginx  # noqa: E402


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("other", type=Path, help="the checkout to compare (A); this one is B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    pythons = {"A": args.other.resolve() / ".venv" / "bin" / "python", "B": run.GATEWAY_PY}
    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    with Nginx(core=int(run.LOAD_CORE)) as upstream:
        for round_ in range(args.rounds):
            order = ("A", "B") if round_ % 2 == 0 else ("B", "A")
            for side in order:
                run.GATEWAY_PY = pythons[side]
                with run.sut("gateway", upstream, 3, "/json/") as (url, pid):
                    run.wrk(url, 16, 1)  # warm-up
                    for c in args.connections:
                        before = cpu_s(pid)
                        w = run.wrk(url, c, args.duration)
                        us = (cpu_s(pid) - before) / w.requests * 1e6
                        results.setdefault((side, c), []).append(w.rps)
                        cpu.setdefault((side, c), []).append(us)
                        print(
                            f"round {round_} {side} c={c} {w.rps:.0f} req/s {us:.0f} CPU us/req",
                            flush=True,
                        )
    print()
    print("| c | A req/s | B req/s | B / A | A CPU us/req | B CPU us/req | B / A |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in args.connections:
        a = statistics.median(results[("A", c)])
        b = statistics.median(results[("B", c)])
        ca = statistics.median(cpu[("A", c)])
        cb = statistics.median(cpu[("B", c)])
        print(f"| {c} | {a:.0f} | {b:.0f} | {b / a:.3f} | {ca:.0f} | {cb:.0f} | {cb / ca:.3f} |")


if __name__ == "__main__":
    main()
