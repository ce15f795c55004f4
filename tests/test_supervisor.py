"""``gateway serve --workers 2`` as a real process: the main process supervises its workers
(drain on SIGTERM, reload on SIGHUP and ``--watch``, replacing a worker that dies)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import backend_config, config_text, simple_config, start_upstream
from test_operations import metric
from upstream import RecordedRequest, Reply

from gateway._server import FORCE_AFTER_S

READY_LINE = re.compile(r"worker (\d+) ready")


class Supervised:
    """A ``gateway serve --workers 2`` process, its URL and what it has logged so far."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.url = ""
        self.log = ""
        self._changed = trio.Event()

    async def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while data := await self.proc.stderr.receive_some(65536):
            self.log += data.decode(errors="replace")
            self._changed.set()
            self._changed = trio.Event()

    async def logged(self, pattern: str, count: int = 1) -> list[str]:
        """Wait until ``pattern`` has been logged ``count`` times; the matches' first groups
        (or whole matches)."""
        while len(found := re.findall(pattern, self.log)) < count:
            await self._changed.wait()
        return found

    async def ready_pids(self, count: int) -> list[int]:
        return [int(pid) for pid in await self.logged(READY_LINE.pattern, count)]


async def serving_url(proc: trio.Process) -> str:
    """The URL `gateway serve` prints once it serves (read from its stdout)."""
    assert proc.stdout is not None
    seen = b""
    while not (match := re.search(rb"serving .*?(http://127\.0\.0\.1:\d+)", seen)):
        data = await proc.stdout.receive_some(4096)
        assert data, f"gateway exited before serving: {seen!r}"
        seen += data
    return match.group(1).decode()


async def start_supervised(
    nursery: trio.Nursery, file: Path, *extra: str, workers: str = "2"
) -> Supervised:
    """`gateway serve --workers N` serving ``file``, once every worker is ready."""
    cmd = [sys.executable, "-m", "gateway", "serve", str(file), "--workers", workers]
    cmd += ["--bind", "127.0.0.1:0", "--log-format", "text", "--log-level", "info", *extra]
    proc: trio.Process = await nursery.start(
        partial(trio.run_process, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    )
    gateway = Supervised(proc)
    nursery.start_soon(gateway.read_stderr)
    gateway.url = await serving_url(proc)
    if int(workers) > 1:
        await gateway.ready_pids(int(workers))
    return gateway


async def fresh_get(url: str) -> httpx.Response:
    """A GET on a new connection, so the kernel may hand it to either worker."""
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.get(url)


async def start_with_slow_upstream(
    nursery: trio.Nursery,
    tmp_path: Path,
    delay_s: float,
    *,
    deadline: str,
    drain_delay: str,
    graceful_timeout: str,
) -> tuple[Any, trio.Event]:
    """A supervised gateway over an upstream whose ``/slow`` answers after ``delay_s``;
    the event is set when a request reaches the upstream."""
    arrived = trio.Event()

    async def slow(req: RecordedRequest) -> Reply:
        arrived.set()
        return Reply(json={"done": True}, delay_s=delay_s)

    up = await start_upstream(nursery, slow)
    config = simple_config({"u": up}, [backend_config("a", "u", "/slow")], deadline=deadline)
    config["server"] = {"drain_delay": drain_delay, "graceful_timeout": graceful_timeout}
    file = tmp_path / "slow.yaml"
    file.write_text(config_text(config))
    return await start_supervised(nursery, file), arrived


def two_endpoints(up: Any) -> dict[str, Any]:
    config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
    config["endpoints"].append({"path": "/later", "backends": [backend_config("b", "u", "/y")]})
    return config


async def test_sigterm_lets_a_slow_request_finish_and_exits_0(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        gateway, arrived = await start_with_slow_upstream(
            nursery, tmp_path, 1.5, deadline="5s", drain_delay="500ms", graceful_timeout="3s"
        )
        slow_answers: list[httpx.Response] = []

        async def slow_request() -> None:
            slow_answers.append(await fresh_get(gateway.url + "/api/1"))

        async with trio.open_nursery() as n:
            n.start_soon(slow_request)
            await arrived.wait()  # the slow request is in flight in one of the workers
            signalled_at = trio.current_time()
            gateway.proc.send_signal(signal.SIGTERM)
            await gateway.logged(r"draining: readiness is 503", 2)
            # within drain_delay both workers still accept, but are not ready
            assert (await fresh_get(gateway.url + "/__gateway/ready")).status_code == 503
        assert slow_answers[0].status_code == 200
        assert slow_answers[0].json() == {"done": True}
        assert await gateway.proc.wait() == 0
        # drain_delay + graceful_timeout, plus a margin for a loaded machine
        assert trio.current_time() - signalled_at < 0.5 + 3 + 2


async def test_a_bad_sighup_is_refused_then_a_good_one_applies(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1}), "/y": Reply(json={"b": 2})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        file = tmp_path / "g.yaml"
        file.write_text(config_text(config))
        gateway = await start_supervised(nursery, file)

        file.write_text(config_text({**config, "endpoints": [{"path": "/broken"}]}))
        gateway.proc.send_signal(signal.SIGHUP)
        await gateway.logged(r"reload refused \(SIGHUP\), still serving the previous config")
        for i in range(6):
            assert (await fresh_get(f"{gateway.url}/api/{i}")).json() == {"a": 1}
        assert "reloaded" not in gateway.log  # no worker was asked to reload

        file.write_text(config_text(two_endpoints(up)))
        gateway.proc.send_signal(signal.SIGHUP)
        await gateway.logged(r"reloaded .*: 2 endpoint\(s\)", 2)  # both workers
        for _ in range(6):
            assert (await fresh_get(gateway.url + "/later")).json() == {"b": 2}
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.proc.wait() == 0


async def test_a_killed_worker_is_replaced(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(40):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        file = tmp_path / "g.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        gateway = await start_supervised(nursery, file)
        first, second = await gateway.ready_pids(2)
        os.kill(first, signal.SIGKILL)
        await gateway.logged(rf"worker {first} exited unexpectedly \(killed by SIGKILL\)")
        # the replacement is ready within the restart delay (0.5 s) plus its startup
        replacement = (await gateway.ready_pids(3))[2]
        assert replacement not in (first, second)
        for i in range(10):
            assert (await fresh_get(f"{gateway.url}/api/{i}")).json() == {"a": 1}
        for _ in range(4):  # whichever worker answers, the death is counted once
            text = (await fresh_get(gateway.url + "/__gateway/metrics")).text
            assert metric(text, "gateway_worker_deaths_total") == 1
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.proc.wait() == 0


async def test_watch_reloads_both_workers(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(40):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1}), "/y": Reply(json={"b": 2})})
        file = tmp_path / "watched.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        gateway = await start_supervised(nursery, file, "--watch")
        file.write_text(config_text(two_endpoints(up)))
        await gateway.logged(r"reloaded .*: 2 endpoint\(s\)", 2)
        for _ in range(6):
            assert (await fresh_get(gateway.url + "/later")).json() == {"b": 2}
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.proc.wait() == 0


def is_gone(pid: int) -> bool:
    """Exited (a zombie not reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            return file.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def test_a_second_sigterm_stops_the_workers_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        gateway, arrived = await start_with_slow_upstream(
            nursery, tmp_path, 20, deadline="30s", drain_delay="10s", graceful_timeout="20s"
        )

        async def slow_request() -> None:
            with contextlib.suppress(httpx.TransportError):
                await fresh_get(gateway.url + "/api/1")

        nursery.start_soon(slow_request)
        await arrived.wait()
        gateway.proc.send_signal(signal.SIGTERM)
        await gateway.logged(r"draining: readiness is 503", 2)
        await trio.sleep(FORCE_AFTER_S)  # sooner, it would be the same signal twice
        gateway.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(5):  # not drain_delay + graceful_timeout
            assert await gateway.proc.wait() == 1


async def test_workers_drain_by_themselves_when_the_main_process_is_killed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        file = tmp_path / "g.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        gateway = await start_supervised(nursery, file)
        pids = await gateway.ready_pids(2)
        gateway.proc.kill()
        await gateway.proc.wait()
        while not all(is_gone(pid) for pid in pids):  # noqa: ASYNC110 - other processes
            await trio.sleep(0.1)


async def test_ten_reloads_under_steady_load_fail_no_request_with_two_workers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        up = await start_upstream(
            nursery, {"/x": Reply(json={"a": 1}, delay_s=0.02), "/y": Reply(json={"b": 2})}
        )
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        file = tmp_path / "live.yaml"
        file.write_text(config_text(config))
        gateway = await start_supervised(nursery, file)
        failures: list[str] = []
        answered = 0
        stop = trio.Event()
        progress = trio.Event()

        async def answers(count: int) -> None:
            """Wait until the clients have had ``count`` more answers."""
            nonlocal progress
            until = answered + count
            while answered < until:
                await progress.wait()
                progress = trio.Event()

        async def load() -> None:
            nonlocal answered
            async with httpx.AsyncClient(trust_env=False) as client:
                while not stop.is_set():
                    try:
                        r = await client.get(gateway.url + "/api/1")
                    except httpx.TransportError as exc:
                        failures.append(repr(exc))
                        continue
                    if r.status_code != 200 or r.json() != {"a": 1}:
                        failures.append(f"{r.status_code} {r.text}")
                    answered += 1
                    progress.set()

        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(load)
            for i in range(10):
                await answers(15)  # the load runs across every reload
                if i == 4:
                    file.write_text("version: 1\nendpoints: [{path: /broken}]\n")
                else:
                    config["endpoints"] = [
                        config["endpoints"][0],
                        {"path": f"/v{i}", "backends": [backend_config("b", "u", "/y")]},
                    ]
                    file.write_text(config_text(config))
                gateway.proc.send_signal(signal.SIGHUP)
                # each reload is applied (twice: one per worker) or refused before the next
                if i == 4:
                    await gateway.logged(r"reload refused \(SIGHUP\)")
                else:
                    await gateway.logged(
                        r"reloaded .*: 2 endpoint\(s\)", 2 * (i if i < 4 else i - 1) + 2
                    )
            await answers(15)
            stop.set()
        assert failures == []
        assert answered >= 165
        for _ in range(4):
            assert (await fresh_get(gateway.url + "/v9")).json() == {"b": 2}
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.proc.wait() == 0


def _sighup_disposition(pid: int) -> str | None:
    """``"ignored"`` or ``"caught"`` (by a handler) in process ``pid``; None while SIGHUP
    has its default action (ending the process)."""
    bit = 1 << (signal.SIGHUP - 1)
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigIgn", "SigCgt"):
            found[name] = int(value.split()[0], 16) & bit
    if found.get("SigIgn"):
        return "ignored"
    return "caught" if found.get("SigCgt") else None


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_sighup_before_the_gateway_serves_does_not_end_it(
    nursery: trio.Nursery, tmp_path: Path, workers: str
) -> None:
    """SIGHUP's default action ends a process: `gateway serve` ignores the signal before its
    imports (which take about a second) until its reload handler takes over, so a reload
    sent right after a restart reloads (or is ignored) instead of killing the gateway. The
    SIGHUP goes out as soon as the process no longer dies of it, while it still imports."""
    with trio.fail_after(30):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        file = tmp_path / "g.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        cmd = [sys.executable, "-m", "gateway", "serve", str(file), "--bind", "127.0.0.1:0"]
        cmd += ["--workers", workers]
        proc: trio.Process = await nursery.start(
            partial(trio.run_process, cmd, stdout=subprocess.PIPE, check=False)
        )
        assert proc.stdout is not None
        for _ in range(3000):  # no event tells another process's signal dispositions
            disposition = _sighup_disposition(proc.pid)
            if disposition is not None:
                break
            await trio.sleep(0.002)
        else:
            raise AssertionError("SIGHUP kept its default action while the gateway started")
        # ignored while it imports and loads, before a handler is there to catch it
        assert disposition == "ignored"
        proc.send_signal(signal.SIGHUP)  # as early as the gateway takes it
        url = await serving_url(proc)
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(url + "/api/1")
        assert r.status_code == 200
        proc.terminate()
        assert await proc.wait() == 0


async def test_sigterm_under_steady_keep_alive_load_drains_without_losing_a_request(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Several keep-alive clients, a slow request in flight, SIGTERM: answers during
    drain_delay carry ``Connection: close`` (clients reconnect instead of racing the
    listener's close on an idle connection), none is lost, the slow request completes, and
    once the workers have closed their listeners a new connection is refused at once
    rather than queued on a socket only the main process still holds."""
    with trio.fail_after(40):
        arrived = trio.Event()

        async def handler(req: RecordedRequest) -> Reply:
            if req.path == "/slow":
                arrived.set()
                return Reply(json={"done": True}, delay_s=4)
            return Reply(json={"a": 1})

        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        slow_endpoint = {"path": "/slow", "deadline": "8s"}
        config["endpoints"].append(
            {**slow_endpoint, "backends": [backend_config("s", "u", "/slow", timeout="8s")]}
        )
        config["server"] = {"drain_delay": "1500ms", "graceful_timeout": "6s"}
        file = tmp_path / "g.yaml"
        file.write_text(config_text(config))
        gateway = await start_supervised(nursery, file)

        failures: list[str] = []
        after_drain: list[httpx.Response] = []
        draining = False
        stop = trio.Event()
        answered = 0
        progress = trio.Event()

        async def load() -> None:
            nonlocal answered, progress
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                while not stop.is_set():
                    started_draining = draining
                    try:
                        r = await client.get(gateway.url + "/api/1")
                    except httpx.TransportError as exc:
                        failures.append(repr(exc))
                        continue
                    if r.status_code != 200 or r.json() != {"a": 1}:
                        failures.append(f"{r.status_code} {r.text}")
                    if started_draining:
                        after_drain.append(r)
                    answered += 1
                    progress.set()
                    progress = trio.Event()

        async def answers(count: int) -> None:
            until = answered + count
            while answered < until:
                await progress.wait()

        slow: list[httpx.Response] = []
        slow_done = trio.Event()

        async def slow_request() -> None:
            slow.append(await fresh_get(gateway.url + "/slow"))
            slow_done.set()

        nursery.start_soon(slow_request)
        async with trio.open_nursery() as n:
            for _ in range(6):
                n.start_soon(load)
            await arrived.wait()
            await answers(30)
            signalled_at = trio.current_time()
            gateway.proc.send_signal(signal.SIGTERM)
            await gateway.logged(r"draining: readiness is 503", 2)
            draining = True
            await answers(60)  # well within drain_delay
            stop.set()
        assert failures == []
        assert len(after_drain) >= 6
        assert all(r.headers["connection"] == "close" for r in after_drain)

        # The listeners close at the end of drain_delay, while the slow request runs on.
        while True:
            try:
                await fresh_get_within(gateway.url + "/__gateway/health", 1.0)
            except httpx.ConnectError:
                break  # refused: the port is closed
            except (httpx.ReadError, httpx.RemoteProtocolError):
                pass  # reset in the instant the last listener closed: a client may retry
            await trio.sleep(0.05)
        assert not slow  # still in flight: the main process did not keep the port open
        assert await gateway.proc.wait() == 0
        await slow_done.wait()
        assert slow[0].status_code == 200
        assert trio.current_time() - signalled_at < 1.5 + 6 + 2


async def fresh_get_within(url: str, timeout_s: float) -> httpx.Response:
    """A GET on a new connection that fails with ReadTimeout if not answered in time."""
    async with httpx.AsyncClient(trust_env=False, timeout=timeout_s) as client:
        return await client.get(url)


async def test_a_worker_that_keeps_dying_is_restarted_with_backoff_and_every_death_counted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Young deaths double the restart delay (0.5 s, 1 s, 2 s). A replacement killed while
    it starts, before it could count anything, still has its death and the one before it
    counted by the next worker of its slot."""
    with trio.fail_after(60):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        file = tmp_path / "g.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        gateway = await start_supervised(nursery, file)
        first = (await gateway.ready_pids(2))[0]
        os.kill(first, signal.SIGKILL)
        await gateway.logged(rf"worker {first} exited .*; starting a new one in 0.5s")
        starting = int((await gateway.logged(r"worker (\d+) started", 3))[2])
        os.kill(starting, signal.SIGKILL)  # while it imports the app, before it is ready
        await gateway.logged(rf"worker {starting} exited .*; starting a new one in 1s")
        third = (await gateway.ready_pids(3))[2]
        assert third not in (first, starting)
        os.kill(third, signal.SIGKILL)
        await gateway.logged(rf"worker {third} exited .*; starting a new one in 2s")
        await gateway.ready_pids(4)
        for _ in range(4):  # whichever worker answers
            text = (await fresh_get(gateway.url + "/__gateway/metrics")).text
            assert metric(text, "gateway_worker_deaths_total") == 3
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.proc.wait() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_sigterm_delivered_twice_at_once_drains_instead_of_forcing(
    nursery: trio.Nursery, tmp_path: Path, workers: str
) -> None:
    """One SIGTERM often arrives twice in the same instant (``timeout`` signals the process
    and then its group): that is one stop, and the in-flight request completes."""
    with trio.fail_after(30):
        arrived = trio.Event()

        async def slow(req: RecordedRequest) -> Reply:
            arrived.set()
            return Reply(json={"done": True}, delay_s=1.5)

        up = await start_upstream(nursery, slow)
        config = simple_config({"u": up}, [backend_config("a", "u", "/slow")], deadline="5s")
        config["server"] = {"drain_delay": "200ms", "graceful_timeout": "3s"}
        file = tmp_path / "g.yaml"
        file.write_text(config_text(config))
        gateway = await start_supervised(nursery, file, workers=workers)
        proc = gateway.proc
        answers: list[httpx.Response] = []

        async def slow_request() -> None:
            answers.append(await fresh_get(gateway.url + "/api/1"))

        async with trio.open_nursery() as n:
            n.start_soon(slow_request)
            await arrived.wait()
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGTERM)
        assert answers[0].status_code == 200
        assert await proc.wait() == 0
        assert "second SIGTERM" not in gateway.log


async def test_a_second_sigterm_a_second_later_stops_one_worker_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        arrived = trio.Event()

        async def slow(req: RecordedRequest) -> Reply:
            arrived.set()
            return Reply(json={"done": True}, delay_s=20)

        up = await start_upstream(nursery, slow)
        config = simple_config({"u": up}, [backend_config("a", "u", "/slow")], deadline="30s")
        config["server"] = {"drain_delay": "10s", "graceful_timeout": "20s"}
        file = tmp_path / "g.yaml"
        file.write_text(config_text(config))
        gateway = await start_supervised(nursery, file, workers="1")
        proc = gateway.proc

        async def slow_request() -> None:
            with contextlib.suppress(httpx.TransportError):
                await fresh_get(gateway.url + "/api/1")

        nursery.start_soon(slow_request)
        await arrived.wait()
        proc.send_signal(signal.SIGTERM)
        await trio.sleep(FORCE_AFTER_S)  # sooner, it would be the same signal twice
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(5):  # not drain_delay + graceful_timeout
            assert await proc.wait() == 1


def test_stop_signals_drain_then_repeat_within_the_window_then_force() -> None:
    from gateway._server import StopSignals

    rule = StopSignals()
    assert rule.received(100.0) == "drain"
    assert rule.received(100.0) == "repeat"
    assert rule.received(100.0 + FORCE_AFTER_S - 0.01) == "repeat"
    assert rule.received(100.0 + FORCE_AFTER_S) == "force"
    assert rule.received(200.0) == "force"
