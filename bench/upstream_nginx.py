"""Start nginx (with the echo module) as a benchmark upstream on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """``with Nginx(core=1) as url: ...``: nginx pinned to ``core``, stopped on exit."""

    def __init__(self, core: int | None = None) -> None:
        self.core = core
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="bench-nginx-")
        self.prefix = self._dir.name  # nginx serves {prefix}/files/NAME at /files/NAME
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        prefix = self._dir.name
        conf = (HERE / "nginx.conf.template").read_text()
        conf = conf.replace("{prefix}", prefix).replace("{port}", str(self.port))
        Path(prefix, "nginx.conf").write_text(conf)
        cmd = ["nginx", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf")]
        if self.core is not None:
            cmd = ["taskset", "-c", str(self.core), *cmd]
        self._proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._dir.cleanup()
