"""Peer 2: the classic tutorial aggregator. FastAPI on uvicorn, one shared
``httpx.AsyncClient`` (default limits), ``asyncio.gather``.

Env: UPSTREAM (base URL), BACKENDS (count), UPSTREAM_PATH (e.g. /json/), HANG_FIRST (1 =
the first backend hangs), DEADLINE_S (whole-request deadline; partial results after it).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

UPSTREAM = os.environ["UPSTREAM"]
BACKENDS = int(os.environ.get("BACKENDS", "3"))
PATH = os.environ.get("UPSTREAM_PATH", "/json/")
HANG_FIRST = os.environ.get("HANG_FIRST") == "1"
DEADLINE_S = float(os.environ.get("DEADLINE_S", "5"))
client: httpx.AsyncClient


@asynccontextmanager
async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
    global client
    async with httpx.AsyncClient(timeout=2.0) as c:
        client = c
        yield


app = FastAPI(lifespan=lifespan)


async def fetch(i: int, item_id: str) -> Any:
    path = "/hang/" if HANG_FIRST and i == 0 else PATH
    r = await client.get(f"{UPSTREAM}{path}{item_id}")
    return r.json()


@app.get("/api/{item_id}")
async def aggregate(item_id: str) -> dict[str, Any]:
    tasks = [asyncio.create_task(fetch(i, item_id)) for i in range(BACKENDS)]
    done, pending = await asyncio.wait(tasks, timeout=DEADLINE_S)
    for task in pending:
        task.cancel()
    return {
        f"b{i}": t.result() if t in done and not t.exception() else None
        for i, t in enumerate(tasks)
    }
