"""Serve a config with a chosen upstream transport (for comparisons only).

    python bench/serve_variant.py {gateway,httpcore} CONFIG BIND

``gateway`` is the shipped transport; ``httpcore`` swaps in a stock ``httpx.AsyncClient``
(httpcore's pool with default limits), everything else identical.
"""

from __future__ import annotations

import sys
from functools import partial

import httpx
import trio

from gateway import _app, create_app, hypercorn_config, load_config, serve_app
from gateway._server import wait_for_signal


def main() -> None:
    variant, config_path, bind = sys.argv[1:4]
    if variant == "httpcore":
        _app.make_client = lambda plan: httpx.AsyncClient(trust_env=False, timeout=None)  # type: ignore[assignment]
    elif variant != "gateway":
        raise SystemExit(f"unknown variant {variant!r}")
    plan = load_config(config_path)
    config = hypercorn_config(plan, bind=bind)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(serve_app, create_app(plan), config, shutdown_trigger=wait_for_signal)
            )
            print("serving", binds[0], flush=True)

    trio.run(run)


if __name__ == "__main__":
    main()
