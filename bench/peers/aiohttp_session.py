"""Peer 3: an aiohttp server with one shared aiohttp ``ClientSession`` on uvloop and
``asyncio.gather``: the fastest common Python pattern. Same env as fastapi_httpx.py, plus
PORT."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = os.environ["UPSTREAM"]
BACKENDS = int(os.environ.get("BACKENDS", "3"))
PATH = os.environ.get("UPSTREAM_PATH", "/json/")
HANG_FIRST = os.environ.get("HANG_FIRST") == "1"
DEADLINE_S = float(os.environ.get("DEADLINE_S", "5"))


async def fetch(session: aiohttp.ClientSession, i: int, item_id: str) -> Any:
    path = "/hang/" if HANG_FIRST and i == 0 else PATH
    async with session.get(f"{UPSTREAM}{path}{item_id}") as r:
        return await r.json(content_type=None)


async def aggregate(request: web.Request) -> web.Response:
    session: aiohttp.ClientSession = request.app["session"]
    item_id = request.match_info["item_id"]
    tasks = [asyncio.create_task(fetch(session, i, item_id)) for i in range(BACKENDS)]
    done, pending = await asyncio.wait(tasks, timeout=DEADLINE_S)
    for task in pending:
        task.cancel()
    return web.json_response(
        {
            f"b{i}": t.result() if t in done and not t.exception() else None
            for i, t in enumerate(tasks)
        }
    )


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        app["session"] = session
        yield


def main() -> None:
    app = web.Application()
    app.router.add_get("/api/{item_id}", aggregate)
    app.cleanup_ctx.append(session_ctx)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), backlog=4096, print=None)


if __name__ == "__main__":
    main()
