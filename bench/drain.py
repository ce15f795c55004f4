"""What clients lose when a gateway drains under steady keep-alive load.

    bench/.venv/bin/python bench/drain.py [--checkout PATH] [--workers 1 2] [--rounds 5]

Each round starts ``gateway serve --workers N`` (from ``--checkout``, this one by default)
over a small keep-alive upstream on 127.0.0.1, runs ``--clients`` clients that each reuse
one connection (httpx, keep-alive) as fast as they can, sends SIGTERM after one second, and
keeps the clients going until the gateway has exited. Every request ends as one of:

- ``ok``: answered 200;
- ``refused``: the connection could not be opened (the listener was closed): the client
  knows the request never left and may retry anywhere;
- ``lost``: the request was written on a connection that then closed or was reset without
  an answer; a client cannot tell whether it was processed.

Reported per worker count: the sum over the rounds of each kind, and how many ``ok``
answers carried ``Connection: close``. Only ``lost`` is a fault of the drain.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path

import httpx
import trio

HERE = Path(__file__).resolve().parent
BODY = b'{"a": 1}'


async def upstream(task_status: trio.TaskStatus[int]) -> None:
    """A keep-alive HTTP/1.1 server answering every request with ``BODY``."""

    async def handle(stream: trio.SocketStream) -> None:
        buffer = b""
        reply = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer.split(b"\r\n\r\n", 1)[1]
                await stream.send_all(reply)
        except trio.BrokenResourceError:
            return

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def config_text(port: int) -> str:
    return f"""version: 1
server: {{drain_delay: 1s, graceful_timeout: 3s}}
upstreams: {{u: {{url: "http://127.0.0.1:{port}"}}}}
endpoints:
  - path: /api
    backends: [{{name: a, upstream: u, path: /x}}]
"""


async def one_round(checkout: Path, workers: int, clients: int, file: Path) -> Counter[str]:
    python = checkout / ".venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), "-m", "gateway", "serve"]
    cmd += [str(file), "--bind", "127.0.0.1:0", "--workers", str(workers)]
    counts: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                cmd,
                cwd=checkout,  # `python -m gateway` imports the checkout's package
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        )
        assert proc.stdout is not None
        seen = b""
        while not (match := re.search(rb"serving .*?(http://127\.0\.0\.1:\d+)", seen)):
            data = await proc.stdout.receive_some(4096)
            assert data, seen
            seen += data
        url = match.group(1).decode() + "/api"
        async with httpx.AsyncClient(trust_env=False) as probe:
            while True:  # every worker ready: they say so on /ready (new connections)
                try:
                    if (await probe.get(url)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
        exited = trio.Event()

        async def client() -> None:
            async with httpx.AsyncClient(
                trust_env=False, timeout=10, limits=httpx.Limits(max_connections=1)
            ) as c:
                while not exited.is_set():
                    try:
                        r = await c.get(url)
                    except httpx.ConnectError:
                        counts["refused"] += 1
                        await trio.sleep(0.01)  # the listener is closed: do not spin
                        continue
                    except httpx.TransportError:
                        counts["lost"] += 1
                        continue
                    counts["ok" if r.status_code == 200 else f"status {r.status_code}"] += 1
                    if r.headers.get("connection") == "close":
                        counts["ok with Connection: close"] += 1

        async with trio.open_nursery() as load:
            for _ in range(clients):
                load.start_soon(client)
            await trio.sleep(1)
            proc.send_signal(signal.SIGTERM)
            counts[f"exit {await proc.wait()}"] += 1
            exited.set()
    return counts


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkout", type=Path, default=HERE.parent)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(upstream)
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "drain.yaml"
            file.write_text(config_text(port))
            for workers in args.workers:
                total: Counter[str] = Counter()
                for _ in range(args.rounds):
                    total += await one_round(args.checkout, workers, args.clients, file)
                print(f"{args.checkout} workers={workers}: {dict(sorted(total.items()))}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    trio.run(main)
