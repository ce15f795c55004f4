"""The ``gateway`` command: serve, check, demo, schema.

Exit codes: 0 success, 1 a runtime failure, 2 a startup error: a bad config, bad arguments,
an address that cannot be listened on (a busy port, ``--bind :99999``), or a worker that
could not start. Errors are one line each on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import orjson
import trio

from . import __version__
from ._config.compile import load_config
from ._config.model import json_schema
from ._config.plan import GatewayPlan
from ._config.units import format_duration
from ._errors import ConfigError, ListenError
from ._listen import check_binds, listen_error_in
from ._observability.logs import configure_logging
from ._rules.cors import CorsPolicy

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 2


def summary(plan: GatewayPlan) -> str:
    """The one-screen summary printed by ``gateway check``."""
    lines = [
        f"{plan.file}: OK: {len(plan.endpoints)} endpoint(s), {len(plan.upstreams)} upstream(s)"
    ]
    for name, up in plan.upstreams.items():
        hosts = " ".join(h.origin for h in up.all_hosts) + up.base.base_path
        balance = f" ({up.balance})" if len(up.all_hosts) > 1 else ""
        if up.base.virtual_host is not None:
            balance += f" Host: {up.base.virtual_host}"
        lines.append(
            f"  upstream {name:<16} {hosts}{balance}"
            f"  timeout {format_duration(up.timeout_s)}  max_connections {up.max_connections}"
        )
    state = plan.config.state
    if state.redis is not None or any(e.rate_limits or e.cache for e in plan.endpoints):
        where = "redis" if state.redis is not None else "memory, per worker"
        lines.append(f"  state: {where}")
    for ep in plan.endpoints:
        kind = "passthrough" if ep.passthrough else f"deadline {format_duration(ep.deadline_s)}"
        extras = [
            f"rate_limit {r.name} {r.limit.rate_per_s:g}/s burst {r.limit.burst}"
            for r in ep.rate_limits
        ]
        if ep.websocket is not None:
            ws = ep.websocket
            extras.append(
                f"websocket max_message_size {ws.max_message_bytes} idle_timeout "
                f"{format_duration(ws.idle_timeout_s)} max_connections {ws.max_connections}"
                + (f" allow_origins {_origins(ws.origins)}" if ws.origins is not None else "")
            )
        if ep.cache is not None:
            extras.append(f"cache {format_duration(ep.cache.ttl_s)}")
        if ep.collections is not None and ep.collections.concat_arrays:
            extras.append("arrays concat")
        if ep.collections is not None and ep.collections.shape is not None:
            extras.append("shape")
        lines.append(f"  {ep.method} {ep.path}  ({', '.join([kind, *extras])})")
        configs = plan.config.endpoints[ep.index].backends
        for be, be_config in zip(ep.backends, configs, strict=True):
            flags = []
            if be.required:
                flags.append("required")
            if be.placement.group:
                flags.append(f"group {be.placement.group}")
            if be.placement.has_default:
                flags.append("default")
            if be.deps:
                flags.append("after " + ", ".join(ep.backends[d].name for d in be.deps))
            if be.for_each:
                flags.append(f"for_each (max {be.max_calls})")
            if be_config.into is not None:
                flags.append(f"into {be_config.into}")
            if be.on_item_error != "fail":
                flags.append(f"on_item_error {be.on_item_error}")
            if be.conditions:
                flags.append("when " + " and ".join(c.describe() for c in be.conditions))
            if be.cache is not None:
                flags.append("cache")
            if be.graphql is not None:
                flags.append("graphql")
            call = (
                f"{be.method} {be.upstream.name}{be.url.text}"
                f"  timeout {format_duration(be.timeout_s)}"
                if be.upstream is not None
                else "static"
            )
            lines.append(f"    {be.name:<16} {call}" + (f"  [{', '.join(flags)}]" if flags else ""))
    return "\n".join(lines)


def _load(path: str) -> GatewayPlan | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    plan = _load(args.file)
    if plan is None:
        return EXIT_CONFIG
    for warning in plan.warnings:
        print(warning, file=sys.stderr)
    print(summary(plan))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    # Until the reload handler (or the supervisor's) is set, a SIGHUP must not end the
    # gateway: SIGHUP's default action is to terminate the process. (The `gateway` command
    # ignores it before its imports already, see gateway._entry; this is for callers of
    # main().)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from ._app import create_app
    from ._sendbounds import bounds_of
    from ._server import (
        drain_on_stop,
        hypercorn_config,
        reload_on_change,
        reload_on_sighup,
        run_workers,
        serve_app,
        watch_stop_signals,
    )

    plan = _load(args.file)
    if plan is None:
        return EXIT_CONFIG
    for warning in plan.warnings:
        print(warning, file=sys.stderr)
    log_format = args.log_format or plan.config.server.log_format
    log_level = args.log_level or plan.config.server.log_level
    configure_logging(log_format, log_level)
    config = hypercorn_config(plan, bind=args.bind, workers=args.workers)
    check_binds([*config.bind, *config.insecure_bind])
    if config.workers > 1:
        # the workers are new processes: they read these back in gateway.asgi
        os.environ["GATEWAY_LOG_FORMAT"] = log_format
        os.environ["GATEWAY_LOG_LEVEL"] = log_level
        return run_workers(
            args.file,
            config,
            watch=args.watch,
            on_listening=lambda urls: print(
                f"gateway: serving {len(plan.endpoints)} endpoint(s) from {plan.file} on "
                + ", ".join(urls)
                + f" with {config.workers} workers",
                flush=True,
            ),
        )

    forced = False

    async def main() -> None:
        app = create_app(plan)
        stop = trio.Event()
        trigger = drain_on_stop(app, stop)
        async with trio.open_nursery() as nursery:

            def force() -> None:
                nonlocal forced
                forced = True
                bounds = bounds_of(config)
                if bounds is not None:  # writes to clients that do not read end now too
                    bounds.end_all_by(trio.current_time())
                nursery.cancel_scope.cancel()  # in-flight requests are cancelled

            await nursery.start(watch_stop_signals, stop, force)

            async def serve_then_stop(task_status: trio.TaskStatus[list[str]]) -> None:
                await serve_app(app, config, shutdown_trigger=trigger, task_status=task_status)
                nursery.cancel_scope.cancel()  # the reload watchers end with the server

            # Both live exactly as long as the server: cancelled by serve_then_stop.
            nursery.start_soon(reload_on_sighup, app, config)
            if args.watch:
                nursery.start_soon(reload_on_change, app, 1.0, config)
            binds = await nursery.start(serve_then_stop)
            print(
                f"gateway: serving {len(plan.endpoints)} endpoint(s) from {plan.file} on "
                + ", ".join(binds),
                flush=True,
            )

    _run_trio(main, ", ".join(config.bind))
    return EXIT_FAILURE if forced else EXIT_OK


def _run_trio(main: Callable[[], Awaitable[None]], binds: str) -> None:
    """``trio.run(main)``, with a :class:`ListenError` raised in a nursery unwrapped, and a
    port taken after :func:`check_binds` (hypercorn's own bind failing) made one too."""
    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        error = listen_error_in(group)
        if error is not None:
            raise error from None
        bind_failure, _ = group.split(_is_bind_failure)
        if bind_failure is None:
            raise
        leaf = bind_failure
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        reason = getattr(leaf, "strerror", None) or str(leaf)
        raise ListenError(binds, reason.lower()) from None


def _is_bind_failure(exc: BaseException) -> bool:
    """An OSError from binding a listener (hypercorn binds before it serves anything)."""
    return isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    configure_logging(args.log_format or "text", args.log_level or "info")
    try:
        _run_trio(
            partial(run_demo, args.bind, config_path=args.config),
            args.bind or "the demo's address",
        )
    except BaseExceptionGroup as group:
        # the config is loaded once the demo services are listening (its ${DEMO_*_URL}
        # name their ports), inside the nursery that runs them
        config_error, _ = group.split(ConfigError)
        if config_error is None:
            raise
        leaf: BaseException = config_error
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, ConfigError)
        for problem in leaf.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from ._config.docs import config_reference_markdown

        sys.stdout.write(config_reference_markdown())
        return EXIT_OK
    sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=["json", "text"], help="overrides server.log_format")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides server.log_level",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway", description="An API-aggregation gateway built on trio."
    )
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve a config file with hypercorn's trio worker")
    serve.add_argument("file", help="config file (YAML)")
    serve.add_argument("--bind", metavar="HOST:PORT", help="overrides server.bind")
    serve.add_argument("--workers", type=int, metavar="N", help="overrides server.workers")
    serve.add_argument(
        "--watch", action="store_true", help="reload the config when the file changes"
    )
    _log_options(serve)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config file without serving")
    check.add_argument("file", help="config file (YAML)")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="run bundled demo upstreams and the gateway")
    demo.add_argument(
        "--bind", metavar="HOST:PORT", help="gateway address (default 127.0.0.1:8000)"
    )
    demo.add_argument(
        "--config",
        metavar="FILE",
        help="serve this config instead of the bundled one; the demo services' addresses "
        "are in ${DEMO_USERS_URL}, ${DEMO_ORDERS_URL} and ${DEMO_RECOMMENDATIONS_URL}",
    )
    _log_options(demo)
    demo.set_defaults(func=cmd_demo)

    schema = sub.add_parser("schema", help="print the config file's JSON Schema")
    schema.add_argument("--markdown", action="store_true", help="the config reference instead")
    schema.set_defaults(func=cmd_schema)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except ListenError as exc:
        print(exc, file=sys.stderr)
        return EXIT_STARTUP
    except OSError as exc:
        print(f"gateway: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _origins(policy: CorsPolicy) -> str:
    listed = sorted(policy.origins) + [f"regex:{p.pattern}" for p in policy.patterns]
    return "*" if policy.any_origin else ",".join(listed)
