"""``gateway serve --workers N``: the main process supervises N worker processes.

I/O at the edge. The main process binds the listening sockets once and every worker serves
hypercorn's trio worker (``worker_serve``) on those same inherited sockets, so a worker that
stops or dies loses no queued connection: the others (or its replacement) accept them.

Why not hypercorn's own runner (``hypercorn.run.run``)? Checked with hypercorn 0.18 and an
upstream answering after 1.5 s, two workers: on SIGTERM it waits for the *first* worker to
exit and then terminates the rest (the 1.5 s request was dropped 0.4 s after the signal); on
SIGHUP it stops every worker before starting new ones, and a bad config then ends the
gateway with status 0. So the gateway runs its own small supervisor, with ``multiprocessing``
spawn as hypercorn does (sockets are handed to the children by multiprocessing itself).

Signals to the main process:

- SIGTERM or SIGINT: forwarded as SIGTERM to every worker, which turns readiness 503, keeps
  accepting for ``drain_delay``, closes its listener and gives in-flight requests
  ``graceful_timeout`` (as one worker does in-process). The main process closes its own copy
  of the listening sockets at once (it starts no worker any more), so once the last worker
  has closed its listener a new connection is refused, not queued in the kernel and reset
  when the main process exits. It waits for every worker and exits 0. A worker still
  starting has accepted nothing and is simply stopped. A second signal at least
  ``FORCE_AFTER_S`` after the first kills the workers (exit 1); one sooner is the same
  signal delivered twice (to the process, then to its group) and changes nothing.
- SIGHUP, or a change of the file with ``--watch``: the main process loads the config first.
  A bad one is refused with its problems logged and the workers are left alone; a good one
  is applied by forwarding SIGHUP, and each worker reloads in place (no worker restarts, so
  no keep-alive connection is closed under a client).
- A worker that exits unexpectedly (a crash, ``kill -9``) is logged with its pid and exit
  status and replaced, after a delay that doubles (from ``RESTART_DELAY_MIN_S`` up to
  ``RESTART_DELAY_MAX_S``) while workers keep dying young. Deaths are counted in
  ``gateway_worker_deaths_total`` by the next worker of the slot that becomes ready (the main
  process imports prometheus-client before the metrics directory is chosen), so a
  replacement that dies while starting hands its own death on with the earlier ones.
- A worker whose main process is gone (killed with SIGKILL) drains and exits by itself.
- A worker that cannot start before any worker was ever ready (its config is bad) stops the
  gateway with its reason printed once and status 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import hypercorn.config
import trio

from ._errors import ListenError

log = logging.getLogger("gateway")

RESTART_DELAY_MIN_S = 0.5
RESTART_DELAY_MAX_S = 10.0
# a worker that lived at least this long before dying resets the restart delay
HEALTHY_LIFETIME_S = 10.0
WATCH_INTERVAL_S = 1.0
# how often a worker checks that the main process is still there
PARENT_CHECK_INTERVAL_S = 1.0
READY = b"ready"


@dataclass
class _Worker:
    process: BaseProcess
    slot: int
    ready: bool = False


@dataclass
class Supervisor:
    """Keeps ``workers`` worker processes serving ``sockets`` until told to stop.

    Args:
        config_path: the config file; validated here before each reload is forwarded.
        config: hypercorn's settings for the workers.
        sockets: the listening sockets, bound and listening already.
        workers: how many worker processes.
        report: the file a worker that cannot start writes its reason to.
        watch: reload when the config file changes, as SIGHUP does.
    """

    config_path: str
    config: hypercorn.config.Config
    sockets: hypercorn.config.Sockets
    workers: int
    report: str
    watch: bool = False
    stopping: bool = False
    forced: bool = False
    startup_failure: str | None = None
    ever_ready: bool = False
    _running: dict[int, _Worker] = field(default_factory=dict)
    _last_pid: dict[int, int] = field(default_factory=dict)
    # per slot: deaths no ready worker has counted in the metrics yet
    _uncounted_deaths: dict[int, int] = field(default_factory=dict)

    async def run(self) -> int:
        """Supervise until every worker has finished; returns the exit status."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._handle_signals)
            if self.watch:
                from ._server import watch_file

                nursery.start_soon(
                    watch_file,
                    self.config_path,
                    WATCH_INTERVAL_S,
                    lambda: self.reload("file changed"),
                )
            async with trio.open_nursery() as slots:
                for slot in range(self.workers):
                    slots.start_soon(self._keep_slot, slot)
            nursery.cancel_scope.cancel()
        if self.startup_failure is not None:
            sys.stderr.write(self.startup_failure)
            return 2
        return 1 if self.forced else 0

    async def _keep_slot(self, slot: int) -> None:
        """Run one worker after another in this slot until the gateway stops."""
        delay_s = RESTART_DELAY_MIN_S
        while not self.stopping:
            started = trio.current_time()
            code = await self._run_worker(slot)
            if self.stopping:
                return
            self._uncounted_deaths[slot] = self._uncounted_deaths.get(slot, 0) + 1
            failure = self._take_report()
            if failure is not None and not self.ever_ready:
                self.startup_failure = failure
                self._stop(force=True)
                return
            if failure is not None:
                log.error("worker could not start: %s", failure.strip())
            if trio.current_time() - started >= HEALTHY_LIFETIME_S:
                delay_s = RESTART_DELAY_MIN_S
            log.error(
                "worker %d exited unexpectedly (%s); starting a new one in %gs",
                self._last_pid[slot],
                _describe_exit(code),
                delay_s,
            )
            await trio.sleep(delay_s)
            delay_s = min(delay_s * 2, RESTART_DELAY_MAX_S)

    async def _run_worker(self, slot: int) -> int:
        """Start a worker, note when it is ready, and return its exit code once it exits.
        It counts the slot's uncounted deaths in its metrics as it becomes ready."""
        ctx = get_context("spawn")
        reader, writer = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=worker_main,
            kwargs={
                "config": self.config,
                "sockets": self.sockets,
                "ready": writer,
                "deaths": self._uncounted_deaths.get(slot, 0),
            },
            name=f"gateway-worker-{slot}",
        )
        process.start()
        writer.close()
        assert process.pid is not None
        worker = _Worker(process, slot)
        self._running[slot] = worker
        self._last_pid[slot] = process.pid
        log.info("worker %d started", process.pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_ready, worker, reader)
                await trio.lowlevel.wait_readable(process.sentinel)
                nursery.cancel_scope.cancel()
        finally:
            reader.close()
            del self._running[slot]
        process.join()
        _mark_dead(process.pid)
        return process.exitcode if process.exitcode is not None else -1

    async def _wait_ready(self, worker: _Worker, reader: Connection) -> None:
        await trio.lowlevel.wait_readable(reader.fileno())
        try:
            if reader.recv_bytes() != READY:
                return
        except (EOFError, OSError):
            return
        worker.ready = True
        self.ever_ready = True
        self._uncounted_deaths[worker.slot] = 0  # counted by the worker before it said so
        log.info("worker %d ready", worker.process.pid)
        if self.stopping:  # it became ready after the stop: it drains like the others
            _send(worker.process, signal.SIGTERM)

    async def _handle_signals(self, task_status: trio.TaskStatus[None]) -> None:
        from ._server import FORCE_AFTER_S, StopSignals

        stops = StopSignals()
        wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with trio.open_signal_receiver(*wanted) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    if not self.stopping:
                        self.reload("SIGHUP")
                    continue
                verdict = stops.received(trio.current_time())
                if verdict == "drain":
                    log.warning("%s: draining %d worker(s)", name, len(self._running))
                    self._stop(force=False)
                elif verdict == "force":
                    log.warning("second %s: stopping the workers now", name)
                    self._stop(force=True)
                else:
                    log.info("%s again within %gs of the first: the same stop", name, FORCE_AFTER_S)

    def reload(self, why: str) -> bool:
        """Validate the config file, then have every ready worker reload it in place."""
        from ._config.compile import load_config
        from ._errors import ConfigError

        try:
            load_config(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error(
                    "reload refused (%s), still serving the previous config: %s", why, problem
                )
            return False
        for worker in list(self._running.values()):
            if worker.ready:
                _send(worker.process, signal.SIGHUP)
        log.info("reload (%s): %s sent to %d worker(s)", why, self.config_path, len(self._running))
        return True

    def _stop(self, *, force: bool) -> None:
        self.stopping = True
        self.forced = self.forced or force
        # No worker is started any more: only the workers' copies keep the port open, so
        # it stops accepting when the last of them closes its listener.
        close_sockets(self.sockets)
        for worker in list(self._running.values()):
            if force or not worker.ready:
                # a worker still starting has accepted no connection: nothing to drain
                worker.process.kill()
            else:
                _send(worker.process, signal.SIGTERM)

    def _take_report(self) -> str | None:
        try:
            with open(self.report, encoding="utf-8") as file:
                text = file.read()
            os.unlink(self.report)
        except FileNotFoundError:
            return None
        return text


def create_listening_sockets(config: hypercorn.config.Config) -> hypercorn.config.Sockets:
    """Bind and listen on every address of ``config``, once, for all workers.

    Raises:
        ListenError: an address that cannot be bound.
    """
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(", ".join(config.bind), reason) from None
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.listen(config.backlog)
    return sockets


def bound_urls(sockets: hypercorn.config.Sockets) -> list[str]:
    """``http://HOST:PORT`` for each listening socket (the real port when 0 was asked)."""
    from hypercorn.utils import repr_socket_addr

    urls = [
        f"https://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.secure_sockets
    ]
    urls += [
        f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.insecure_sockets
    ]
    return urls


def close_sockets(sockets: hypercorn.config.Sockets) -> None:
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets]:
        sock.close()


def _send(process: BaseProcess, signum: int) -> None:
    if process.pid is None:
        return
    # a worker that has just exited is gone already: its sentinel tells the supervisor
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _mark_dead(pid: int) -> None:
    """Tell prometheus-client's multiprocess mode that ``pid``'s live gauges are gone."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# ---- in the worker process ----


def worker_main(
    config: hypercorn.config.Config,
    sockets: hypercorn.config.Sockets,
    ready: Connection,
    deaths: int = 0,
) -> None:
    """A worker: load the app (``gateway.asgi``, which reports a bad config and exits 2),
    then serve the inherited sockets until SIGTERM, reloading on SIGHUP.

    The main process cannot count a worker's death in the metrics (it imported
    prometheus-client before choosing the multiprocess directory), so the worker counts
    ``deaths`` (its slot's, not counted yet) just before it reports ready: its counters live
    on in the shared directory after it exits too.
    """
    # The main process forwards what it receives: a Ctrl-C reaching the whole process group
    # must not stop a worker by itself, and a SIGHUP before the reload handler is set must
    # not kill it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from .asgi import app

    def say_ready() -> None:
        if deaths:
            from ._observability.metrics import WORKER_DEATHS

            WORKER_DEATHS.inc(deaths)
        ready.send_bytes(READY)

    trio.run(_serve_worker, app, config, sockets, say_ready)
    ready.close()


async def _serve_worker(
    app: object,
    config: hypercorn.config.Config,
    sockets: hypercorn.config.Sockets,
    say_ready: Callable[[], None],
) -> None:
    from ._app import GatewayApp
    from ._server import reload, serve_app

    assert isinstance(app, GatewayApp)
    stop = trio.Event()

    async def signals(task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as received:
            task_status.started()
            async for signum in received:
                if signum == signal.SIGTERM:
                    stop.set()  # a second SIGTERM changes nothing: the main process kills
                elif not stop.is_set():
                    reload(app, config)  # the config, and server.tls's certificates

    async def drain_if_orphaned() -> None:
        # a main process killed with SIGKILL cannot forward anything: the worker would
        # hold the port forever, unsupervised
        parent = os.getppid()
        while os.getppid() == parent:  # noqa: ASYNC110 - no event for another process
            await trio.sleep(PARENT_CHECK_INTERVAL_S)
        log.warning("the main process %d is gone: draining", parent)
        stop.set()

    async def trigger() -> None:
        await stop.wait()
        app.draining = True
        delay_s = app.plan.config.server.drain_delay or 0
        log.warning("draining: readiness is 503; closing the listener in %gs", delay_s)
        if delay_s:
            await trio.sleep(delay_s)

    async with trio.open_nursery() as nursery:

        async def serve_then_stop(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve_app(
                app, config, sockets=sockets, shutdown_trigger=trigger, task_status=task_status
            )
            nursery.cancel_scope.cancel()

        await nursery.start(signals)
        nursery.start_soon(drain_if_orphaned)
        await nursery.start(serve_then_stop)
        with contextlib.suppress(OSError):  # the main process is gone: serve on regardless
            say_ready()
