"""A real redis-server for tests: started on a free loopback port, without persistence,
and killed, paused or restarted by the test."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess

import pytest
import trio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1, without persistence."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: trio.Process | None = None

    async def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server")
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = await trio.lowlevel.open_process(
            [executable, "--port", str(self.port), *options, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.fail_after(10):
            while not await self._answers():
                if self.process.poll() is not None:
                    pytest.fail(f"redis-server exited with {self.process.returncode}")
                await trio.sleep(0.01)

    async def _answers(self) -> bool:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError:
            return False
        async with stream:
            await stream.send_all(b"PING\r\n")
            return await stream.receive_some(64) == b"+PONG\r\n"

    async def kill(self) -> None:
        if self.process is not None:
            with trio.CancelScope(shield=True):
                self.process.kill()
                await self.process.wait()
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
