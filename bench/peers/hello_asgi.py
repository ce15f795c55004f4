"""The ceiling of our server stack: a raw ASGI hello world on hypercorn's trio worker.

``/sleep/...`` answers after 1 s: what the server stack alone holds per request in
flight (the memory scenario's floor)."""

from __future__ import annotations

from typing import Any

import trio

BODY = b'{"hello": "world"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":  # the trio worker needs lifespan answered
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"].startswith("/sleep/"):
        await trio.sleep(1)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
