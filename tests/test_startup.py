"""Startup errors as users meet them: one line on stderr and exit status 2, from real
processes (`gateway serve` with one or two workers, `gateway demo`, plain hypercorn)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from conftest import backend_config, config_text

BAD_CONFIG = (
    "version: 1\nendpoints: [{path: /a, backends: [{name: a, upstream: nope, path: /x}]}]\n"
)
PROBLEM = "endpoints[0].backends[0].upstream: unknown upstream 'nope'"

COMMANDS = {
    "serve": ["serve", "{file}"],
    "serve --workers 2": ["serve", "{file}", "--workers", "2"],
    "demo": ["demo"],
}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    file = tmp_path / "g.yaml"
    config = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [{"path": "/api/{id}", "backends": [backend_config("a", "u", "/x")]}],
    }
    file.write_text(config_text(config))
    return file


async def run_gateway(file: Path, command: str, bind: str) -> trio.CompletedProcess[bytes]:
    args = [a.replace("{file}", str(file)) for a in COMMANDS[command]]
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "gateway", *args, "--bind", bind],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def stderr_lines(done: trio.CompletedProcess[bytes]) -> list[str]:
    return done.stderr.decode().splitlines()


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_a_busy_port_is_one_line_and_status_2(
    command: str, good_config: Path, busy_port: int
) -> None:
    done = await run_gateway(good_config, command, f"127.0.0.1:{busy_port}")
    assert done.returncode == 2
    assert stderr_lines(done) == [
        f"gateway: cannot listen on 127.0.0.1:{busy_port}: address already in use"
    ]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(
    ("bind", "reason"), [(":99999", "port must be 0-65535"), ("nohost:80", "unknown host 'nohost'")]
)
async def test_a_bad_bind_address_is_one_line_and_status_2(
    command: str, bind: str, reason: str, good_config: Path
) -> None:
    done = await run_gateway(good_config, command, bind)
    assert done.returncode == 2
    assert stderr_lines(done) == [f"gateway: cannot listen on {bind}: {reason}"]


async def test_a_worker_that_cannot_start_is_reported_once_with_status_2(tmp_path: Path) -> None:
    """Workers read the config again, so it can go bad after the main process checked it:
    here the workers get a bad file directly. Hypercorn's runner alone would exit 0, and
    each worker would print the problem."""
    file = tmp_path / "bad.yaml"
    file.write_text(BAD_CONFIG)
    code = (
        "import sys, hypercorn.config\n"
        "from gateway._server import run_workers\n"
        "c = hypercorn.config.Config()\n"
        "c.bind, c.workers, c.worker_class = ['127.0.0.1:0'], 2, 'trio'\n"
        "sys.exit(run_workers(sys.argv[1], c))\n"
    )
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-c", code, str(file)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 2
    assert stderr_lines(done) == [f"{file}: {PROBLEM} (known: none defined)"]


async def run_plain_hypercorn(file: Path, workers: int) -> trio.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "hypercorn", "-k", "trio", "-w", str(workers)]
    with trio.fail_after(60):  # the process ends by itself: it neither serves nor restarts
        return await trio.run_process(
            [*cmd, "-b", "127.0.0.1:0", "gateway.asgi:app"],
            env={**os.environ, "GATEWAY_CONFIG": str(file)},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_plain_hypercorn_in_process_exits_2_naming_the_problem(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(BAD_CONFIG)
    done = await run_plain_hypercorn(file, 0)
    assert done.returncode == 2
    assert f"{file}: {PROBLEM}" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


async def test_plain_hypercorn_with_a_worker_names_the_problem_and_stops(tmp_path: Path) -> None:
    """With workers hypercorn's runner exits 0 whatever they did (pgjones/hypercorn#269):
    what the gateway controls is that the worker names the problem and nothing restarts it."""
    file = tmp_path / "bad.yaml"
    file.write_text(BAD_CONFIG)
    done = await run_plain_hypercorn(file, 1)
    assert done.stderr.decode().count(f"{file}: {PROBLEM}") == 1
    assert "Traceback" not in done.stderr.decode()
