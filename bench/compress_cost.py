"""What compressing a response body costs, per algorithm, level and size, against a thread hop.

    .venv/bin/python bench/compress_cost.py [--quick]

The bodies are merged-JSON-like documents (objects of ids, names, tiers, timestamps and
short arrays, as an aggregation endpoint returns), cut to each size. Printed, as Markdown
tables:

1. every level of each algorithm at 20 KiB and 256 KiB: median time of one whole-body
   compression (one-shot, as the gateway compresses a complete body) and the compressed
   size (what the default levels were chosen from);
2. the cost of moving work off the event loop: the median round trip of
   ``trio.to_thread.run_sync`` of a no-op (what a body sent to a worker thread waits on
   top of its compression), and the event loop thread's own CPU per hop;
3. the cut-off of every level: the body size from which compressing inline takes longer
   than the hop's loop CPU (interpolated between measured sizes). From there on a worker
   thread stalls the loop less than compressing inline does. Also printed as the Python
   table ``gateway/_rules/encoding.py`` keeps (``THREAD_CUTOFF_BYTES``), made monotone
   (a level never gets a higher cut-off than the level below it);
4. the streaming path at the default levels: compressing and flushing the next 16 KiB
   chunk of a stream under way;
5. whether each library releases the GIL while it compresses (otherwise a worker thread
   would stall the loop just the same): the loop's ticks while a 4 MiB body is compressed
   in a thread.

The machine is shared and noisy: run it two or three times and compare.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import trio
import trio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway._compress import StreamEncoder, one_shot, stream_encoder
from gateway._rules.encoding import DEFAULT_LEVELS, LEVEL_RANGES

KIB = 1024
GRID = (512, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
GRID_BYTES = tuple(g if g == 512 else g * KIB for g in GRID)
CHUNK = 16 * KIB


def json_body(size: int, seed: int = 7) -> bytes:
    """A merged-JSON-like document of about ``size`` bytes."""
    rng = random.Random(seed)
    tiers = ("gold", "silver", "bronze", "none")
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
    records = []
    total = 0
    i = 0
    while total < size:
        record = {
            "id": 100000 + i,
            "name": f"{rng.choice(words).title()} {rng.choice(words).title()}",
            "email": f"user{rng.randrange(10**6)}@example.com",
            "tier": rng.choice(tiers),
            "created_at": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
            f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            "balance": round(rng.uniform(0, 10000), 2),
            "orders": [rng.randrange(10**7) for _ in range(rng.randrange(0, 5))],
            "active": rng.random() < 0.8,
        }
        records.append(record)
        total += len(orjson.dumps(record)) + 1
        i += 1
    return orjson.dumps({"users": records, "complete": True})[: max(size, 2)]


def median_s(fn: Callable[[], object], budget_s: float, max_runs: int = 25) -> float:
    """Median time of ``fn``: at least 3 runs, more while within ``budget_s``."""
    fn()  # warm
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or (spent < budget_s and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return statistics.median(times)


async def hop_cost(runs: int) -> tuple[float, float]:
    """Median wall round trip of a no-op thread hop, and the loop thread's CPU per hop
    (median of 5 batches)."""

    def noop() -> None:
        return None

    for _ in range(100):
        await trio.to_thread.run_sync(noop)
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(5):
        cpu_start = time.thread_time()
        for _ in range(runs):
            start = time.perf_counter()
            await trio.to_thread.run_sync(noop)
            walls.append(time.perf_counter() - start)
        cpus.append((time.thread_time() - cpu_start) / runs)
    return statistics.median(walls), statistics.median(cpus)


async def loop_ticks_during(fn: Callable[[], object]) -> tuple[int, float]:
    """How often the loop ran (``trio.sleep(0)`` returning) while ``fn`` ran in a worker
    thread, and how long ``fn`` took."""
    ticks = 0
    done = trio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            await trio.lowlevel.checkpoint()
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        start = time.perf_counter()
        await trio.to_thread.run_sync(fn)
        elapsed = time.perf_counter() - start
        done.set()
    return ticks, elapsed


def cutoff(times: dict[int, float], hop_s: float) -> int:
    """The size from which compressing takes longer than ``hop_s``, interpolated
    linearly between the two measured sizes around it (bytes, rounded to 256)."""
    previous_size, previous_t = 0, 0.0
    for size in sorted(times):
        t = times[size]
        if t > hop_s:
            if previous_size == 0:
                return 0
            share = (hop_s - previous_t) / (t - previous_t)
            return int(previous_size + share * (size - previous_size)) // 256 * 256
        previous_size, previous_t = size, t
    return max(times)  # never slower than a hop up to the largest size measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the default levels only")
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    args = parser.parse_args()
    budget = 0.02 if args.quick else 0.03
    levels = [
        (coding, level)
        for coding, (low, high) in LEVEL_RANGES.items()
        for level in ((DEFAULT_LEVELS[coding],) if args.quick else range(low, high + 1))
    ]
    samples: dict[tuple[str, int, int], list[float]] = {}
    hops: list[tuple[float, float]] = []
    bodies = {size: json_body(size) for size in (*GRID_BYTES, 20 * KIB)}
    # rounds, each over every level: a machine that drifts slower disturbs all alike
    for _ in range(args.rounds):
        hops.append(trio.run(hop_cost, 400))
        for coding, level in levels:
            for sizes in ((20 * KIB, 256 * KIB), GRID_BYTES):
                for size in sizes:
                    t = median_s(
                        lambda c=coding, lv=level, b=bodies[size]: one_shot(c, lv, b), budget / 2
                    )
                    samples.setdefault((coding, level, size), []).append(t)
                    if sizes is GRID_BYTES and t > 4 * hops[-1][1]:
                        break  # the cut-off lies below: no need to time bigger bodies
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def med(coding: str, level: int, size: int) -> float:
        return statistics.median(samples[(coding, level, size)])

    print("## One whole body: median us (compressed size as % of the original)\n")
    print("| coding | level | 20 KiB | 256 KiB |")
    print("| --- | --- | --- | --- |")
    for coding, level in levels:
        cells = []
        for size in (20 * KIB, 256 * KIB):
            ratio = len(one_shot(coding, level, bodies[size])) / size * 100
            cells.append(f"{med(coding, level, size) * 1e6:.0f} ({ratio:.1f}%)")
        mark = " (default)" if level == DEFAULT_LEVELS[coding] else ""
        print(f"| {coding} | {level}{mark} | " + " | ".join(cells) + " |")

    hop_wall = statistics.median(h[0] for h in hops)
    hop_cpu = statistics.median(h[1] for h in hops)
    print(
        f"\n## Thread hop: `trio.to_thread.run_sync(noop)` round trip median"
        f" {hop_wall * 1e6:.0f} us, loop thread CPU per hop {hop_cpu * 1e6:.0f} us"
        f" (rounds: {', '.join(f'{w * 1e6:.0f}/{c * 1e6:.0f}' for w, c in hops)})\n"
    )
    print("## Cut-off: body size from which inline compression takes longer than the hop's")
    print("loop CPU\n")
    print("| coding | level | cut-off |")
    print("| --- | --- | --- |")
    table: dict[str, dict[int, int]] = {}
    for coding, level in levels:
        times = {
            size: med(coding, level, size)
            for size in GRID_BYTES
            if (coding, level, size) in samples
        }
        cut = cutoff(times, hop_cpu)
        print(f"| {coding} | {level} | {cut / KIB:.2f} KiB |")
        # a higher level never costs less: noise must not give it a higher cut-off
        by_level = table.setdefault(coding, {})
        by_level[level] = min(cut, by_level.get(level - 1, cut))
    print("\nTHREAD_CUTOFF_BYTES = {")
    for coding, by_level in table.items():
        print(f'    "{coding}": {{{", ".join(f"{lv}: {b}" for lv, b in by_level.items())}}},')
    print("}")

    print("\n## Streaming: compress and flush the next 16 KiB chunk, median us\n")
    print("| coding | level | us per chunk | out / in |")
    print("| --- | --- | --- | --- |")
    stream = json_body(4096 * KIB)
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream) - CHUNK + 1, CHUNK)]
    for coding, level in DEFAULT_LEVELS.items():
        encoder = stream_encoder(coding, level)
        sent = [0, 0]  # chunks, bytes out

        def step(encoder: StreamEncoder = encoder, sent: list[int] = sent) -> None:
            sent[1] += len(encoder.chunk(chunks[sent[0] % len(chunks)]))
            sent[0] += 1

        t = median_s(step, 0.5, max_runs=2000)
        print(f"| {coding} | {level} | {t * 1e6:.0f} | {sent[1] * 100 / (sent[0] * CHUNK):.1f}% |")

    print("\n## GIL: loop ticks while 4 MiB is compressed in a worker thread\n")
    print("| coding | level | ms in the thread | loop ticks meanwhile |")
    print("| --- | --- | --- | --- |")
    for coding, level in DEFAULT_LEVELS.items():
        ticks, elapsed = trio.run(
            loop_ticks_during, lambda c=coding, lv=level: one_shot(c, lv, stream)
        )
        print(f"| {coding} | {level} | {elapsed * 1e3:.1f} | {ticks} |")


if __name__ == "__main__":
    main()
