"""Running the app on hypercorn's trio worker, in-process or with several workers."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable

import hypercorn.config
import hypercorn.trio
import trio
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from ._app import GatewayApp
from ._config.plan import GatewayPlan
from ._sendbounds import bound_sends, bounds_of
from ._tls import ListenerConfig
from ._websocket import CLOSE_ALLOWANCE_S

CONFIG_ENV = "GATEWAY_CONFIG"
# a file a worker that cannot start writes its reason to (gateway.asgi), for the main process
STARTUP_REPORT_ENV = "GATEWAY_STARTUP_REPORT"
log = logging.getLogger("gateway")


def hypercorn_config(
    plan: GatewayPlan, *, bind: str | None = None, workers: int | None = None
) -> hypercorn.config.Config:
    """Hypercorn settings from the config's ``server`` section (CLI values win)."""
    server = plan.config.server
    config = ListenerConfig()
    config.apply_tls(server.tls)  # HTTP/2 over TLS through ALPN; see _tls
    config.bind = [bind or server.bind, *([server.admin_bind] if server.admin_bind else [])]
    config.workers = workers or server.workers
    config.worker_class = "trio"
    # hypercorn's default backlog of 100 drops connections in a burst
    config.backlog = server.backlog
    config.graceful_timeout = server.graceful_timeout
    config.include_server_header = False
    # h11 answers 431 when the request head outgrows this buffer
    config.h11_max_incomplete_size = server.max_header_size
    config.accesslog = None
    return config


# A second SIGINT/SIGTERM forces a stop only this long after the first: one signal is often
# delivered twice in the same instant (`timeout`, or a supervisor signalling the process and
# then its group), which must not turn a drain into dropped requests.
FORCE_AFTER_S = 1.0


class StopSignals:
    """What SIGINT and SIGTERM mean to a serving process: the first starts a drain; another
    one at least :data:`FORCE_AFTER_S` later forces the stop; one in between is the same
    stop delivered twice and changes nothing.

    Pure: :meth:`received` is told each signal with the time (seconds, any clock) and
    answers ``"drain"``, ``"force"`` or ``"repeat"``.
    """

    def __init__(self) -> None:
        self.first_at: float | None = None

    def received(self, now_s: float) -> str:
        if self.first_at is None:
            self.first_at = now_s
            return "drain"
        return "force" if now_s - self.first_at >= FORCE_AFTER_S else "repeat"


async def watch_stop_signals(
    stop: trio.Event,
    force: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Until cancelled: set ``stop`` on the first SIGINT/SIGTERM, call ``force`` on a second
    one (see :class:`StopSignals`)."""
    rule = StopSignals()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            verdict = rule.received(trio.current_time())
            if verdict == "drain":
                stop.set()
            elif verdict == "force":
                log.warning("second %s: stopping now", name)
                force()
            else:
                log.info("%s again within %gs of the first: the same stop", name, FORCE_AFTER_S)


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM: hypercorn's trigger for a graceful shutdown."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def reload(app: GatewayApp, config: hypercorn.config.Config | None = None) -> None:
    """Reload the config; if it is accepted, the listener's certificates too (``config``:
    the serving hypercorn settings)."""
    if app.reload() and isinstance(config, ListenerConfig):
        config.reload_tls(app.plan.config.server.tls)


async def reload_on_sighup(
    app: GatewayApp,
    config: hypercorn.config.Config | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reload the config (and certificates) on every SIGHUP, until cancelled. Started once
    the signal is watched."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            reload(app, config)


async def watch_file(path: str, interval_s: float, on_change: Callable[[], object]) -> None:
    """Call ``on_change`` whenever the file at ``path`` changes (its modification time or
    size, polled every ``interval_s``), until cancelled. A file that is missing for a while
    (an editor replacing it) is not a change."""

    def stamp() -> tuple[float, int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return (info.st_mtime, info.st_size)

    last = stamp()
    while True:
        await trio.sleep(interval_s)
        current = stamp()
        if current is not None and current != last:
            last = current
            on_change()


async def reload_on_change(
    app: GatewayApp, interval_s: float = 1.0, config: hypercorn.config.Config | None = None
) -> None:
    """Reload the config when its file changes (polled every ``interval_s``), until
    cancelled."""
    await watch_file(app.plan.file, interval_s, lambda: reload(app, config))


def drain_on_stop(app: GatewayApp, stop: trio.Event) -> Callable[[], Awaitable[None]]:
    """A shutdown trigger: once ``stop`` is set (the first SIGINT/SIGTERM, see
    :func:`watch_stop_signals`) readiness turns 503 at once; the listener keeps accepting
    for ``server.drain_delay`` (of the config in effect then: a reload changes it) so load
    balancers notice, then hypercorn closes it and gives in-flight requests its
    ``graceful_timeout``."""

    async def trigger() -> None:
        await stop.wait()
        app.draining = True
        drain_delay_s = app.plan.config.server.drain_delay
        log.warning("draining: readiness is 503; closing the listener in %gs", drain_delay_s or 0)
        if drain_delay_s:
            await trio.sleep(drain_delay_s)

    return trigger


async def serve_app(
    app: GatewayApp,
    config: hypercorn.config.Config,
    *,
    sockets: hypercorn.config.Sockets | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (or forever); reports the bound URLs.

    Use as ``binds = await nursery.start(serve_app, app, config)``. ``sockets`` are
    listening sockets made by another process (a worker of ``gateway serve --workers N``);
    without them hypercorn binds ``config.bind`` itself.
    """
    if isinstance(app, GatewayApp):  # the demo serves its upstreams here too
        app.listener_config = config  # a reload updates the settings hypercorn reads live
        bound_sends(config, app.plan.config.server.send_timeout)
        if shutdown_trigger is not None:
            shutdown_trigger = _closing_websockets(app, config, shutdown_trigger)
    listening = _Listening(app, config.bind, task_status)
    if sockets is None:
        await hypercorn.trio.serve(
            app, config, shutdown_trigger=shutdown_trigger, task_status=listening
        )
        return
    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, None),
        config,
        sockets=sockets,
        shutdown_trigger=shutdown_trigger,
        task_status=listening,
    )


def _closing_websockets(
    app: GatewayApp, config: hypercorn.config.Config, trigger: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """``trigger``, then the close of the WebSockets still open at the end of
    ``graceful_timeout``: hypercorn would cancel them without a close frame, so the gateway
    closes them with 1001 itself, and hypercorn's own stop comes
    :data:`~gateway._websocket.CLOSE_ALLOWANCE_S` later for their close handshakes. Writes
    to clients end by then too (:mod:`gateway._sendbounds`)."""

    async def closing() -> None:
        await trigger()
        graceful_s = app.plan.config.server.graceful_timeout
        if app.relays.total:
            config.graceful_timeout = graceful_s + CLOSE_ALLOWANCE_S
        now = trio.current_time()
        app.relays.close_at(now + graceful_s)
        bounds = bounds_of(config)
        if bounds is not None:  # a write to a client that does not read ends with the rest
            bounds.end_all_by(now + config.graceful_timeout)

    return closing


class _Listening:
    """Passes hypercorn's bound URLs on, after telling the app (its admin listener)."""

    def __init__(self, app: GatewayApp, binds: list[str], inner: trio.TaskStatus[list[str]]):
        self._app, self._binds, self._inner = app, binds, inner

    def started(self, value: list[str] | None = None) -> None:
        if isinstance(self._app, GatewayApp):  # the demo serves its upstreams here too
            self._app.listening(self._binds, value or [])
        self._inner.started(value or [])


def run_workers(
    config_path: str,
    config: hypercorn.config.Config,
    *,
    watch: bool = False,
    on_listening: Callable[[list[str]], None] | None = None,
) -> int:
    """``config.workers`` worker processes supervised by this process (see
    :mod:`gateway._supervisor`), sharing the listening sockets bound here.

    Returns 0 after a drain on SIGTERM/SIGINT, 1 when a second signal forced the stop, and 2
    with the worker's reason printed once when a worker could not start.
    """
    from ._supervisor import Supervisor, bound_urls, close_sockets, create_listening_sockets

    sockets = create_listening_sockets(config)
    try:
        if on_listening is not None:
            on_listening(bound_urls(sockets))
        with tempfile.TemporaryDirectory(prefix="gateway-startup-") as report_dir:
            report = os.path.join(report_dir, "report")
            os.environ[CONFIG_ENV] = os.path.abspath(config_path)
            os.environ[STARTUP_REPORT_ENV] = report
            supervisor = Supervisor(
                os.path.abspath(config_path), config, sockets, config.workers, report, watch
            )
            try:
                return _with_multiproc_metrics(lambda: trio.run(supervisor.run))
            finally:
                del os.environ[STARTUP_REPORT_ENV]
    finally:
        close_sockets(sockets)


def _with_multiproc_metrics(run: Callable[[], int]) -> int:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return run()
    # Workers add up their metrics through files in one directory (multiprocess mode);
    # the workers are spawned afresh, so they see the variable before importing the client.
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            return run()
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
