"""Startup errors as users meet them: one line on stderr and exit status 2, from real
processes (`gateway serve` with one or two workers, `gateway demo`)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from conftest import backend_config, config_text

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
