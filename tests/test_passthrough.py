"""Passthrough endpoints stream status, headers and body both ways without buffering."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
from conftest import backend_config, recorder, start_gateway, start_upstream
from upstream import Reply


def passthrough_config(up_url: str, **backend: object) -> dict[str, object]:
    return {
        "version": 1,
        "upstreams": {"files": {"url": up_url}},
        "endpoints": [
            {
                "path": "/files/{name}",
                "method": method,
                "passthrough": True,
                "backends": [backend_config("files", "files", "/blob/{name}", **backend)],
            }
            for method in ("GET", "POST")
        ],
    }


async def test_status_headers_and_body_pass_through(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/blob/a": Reply(
                    status=201,
                    body=b"not json at all",
                    headers=[
                        ("Content-Type", "text/plain"),
                        ("X-Custom", "1"),
                        ("Connection", "X-Secret-Hop"),
                        ("X-Secret-Hop", "drop me"),
                        ("Keep-Alive", "timeout=5"),
                    ],
                )
            },
        )
        gw = await start_gateway(nursery, passthrough_config(up.url))
        r = await gw.get("/files/a")
        assert r.status_code == 201
        assert r.content == b"not json at all"
        assert r.headers["content-type"] == "text/plain"
        assert r.headers["x-custom"] == "1"
        assert "x-secret-hop" not in r.headers
        assert "keep-alive" not in r.headers
        assert r.headers["x-gateway-backends"] == "files=ok"


async def test_upstream_error_status_passes_through(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {})
        gw = await start_gateway(nursery, passthrough_config(up.url))
        r = await gw.get("/files/missing")
        assert r.status_code == 404
        assert r.json() == {"error": "no route"}
        assert r.headers["x-gateway-backends"] == "files=http_404"


async def test_request_body_method_and_content_type_are_streamed(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(lambda req: Reply(json={"got": len(req.body)}))

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, passthrough_config(up.url))

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(64):
                yield b"y" * 16384

        r = await gw.request(
            "POST", "/files/up", content=chunks(), headers={"Content-Type": "application/x-y"}
        )
        assert r.status_code == 200
        assert r.json() == {"got": 64 * 16384}
        assert seen[-1].method == "POST"
        assert seen[-1].headers["content-type"] == "application/x-y"
        assert seen[-1].body == b"y" * (64 * 16384)


async def test_a_body_larger_than_memory_comfortably_holds_is_streamed(
    nursery: trio.Nursery,
) -> None:
    chunk_size = 256 * 1024
    chunks = 1024  # 256 MiB
    with trio.fail_after(90):
        up = await start_upstream(
            nursery, {"/blob/big": Reply(chunks=chunks, chunk_size=chunk_size)}
        )
        gw = await start_gateway(nursery, passthrough_config(up.url))
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        received = 0
        async with gw.client.stream("GET", gw.url + "/files/big") as r:
            assert r.status_code == 200
            async for data in r.aiter_raw():
                received += len(data)
        peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        assert received == chunks * chunk_size
        # gateway, upstream and client all live in this process: together they held a
        # small fraction of the body at any time
        assert peak_after - peak_before < 64 * 1024 * 1024, (peak_before, peak_after)


async def test_timeout_bounds_gaps_not_the_whole_transfer(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/blob/steady": Reply(chunks=12, chunk_size=10, chunk_delay_s=0.05),
                "/blob/stall": Reply(chunks=3, chunk_size=10, chunk_delay_s=1.0),
            },
        )
        gw = await start_gateway(nursery, passthrough_config(up.url, timeout="250ms"))
        start = trio.current_time()
        r = await gw.get("/files/steady")  # 0.6 s in all, never 250 ms without data
        assert r.status_code == 200
        assert r.content == b"x" * 120
        assert trio.current_time() - start > 0.5

        # the head arrives at once, then the body stalls: the gateway aborts the response
        # so the client can tell it is incomplete
        with pytest.raises(httpx.RemoteProtocolError):
            await gw.get("/files/stall")
        with trio.fail_after(2):
            await up.aborted_event.wait()


async def test_head_timeout_is_504_and_unreachable_is_502(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/blob/slow": Reply(delay_s=3), "/blob/r": Reply(fault="reset")}
        )
        gw = await start_gateway(nursery, passthrough_config(up.url, timeout="200ms"))
        r = await gw.get("/files/slow")
        assert r.status_code == 504
        assert r.headers["x-gateway-backends"] == "files=timeout"
        assert r.json()["backends"] == {"files": "timeout"}
        r = await gw.get("/files/r")
        assert r.status_code == 502
        assert r.headers["x-gateway-backends"] == "files=unreachable"


async def test_client_leaving_mid_download_closes_the_upstream_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/blob/long": Reply(chunks=1000, chunk_size=1024, chunk_delay_s=0.01)}
        )
        gw = await start_gateway(nursery, passthrough_config(up.url))
        async with (
            httpx.AsyncClient(trust_env=False) as client,
            client.stream("GET", gw.url + "/files/long") as r,
        ):
            async for _ in r.aiter_raw():
                break  # leave after the first chunk: closes the connection
        with trio.fail_after(2):
            await up.aborted_event.wait()
        assert up.aborted == ["/blob/long"]


async def test_a_streamed_request_body_over_the_limit_is_413(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/blob/up": Reply(json={})})
        config = passthrough_config(up.url)
        config["server"] = {"max_request_body": "64KiB"}
        gw = await start_gateway(nursery, config)

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(8):  # 128 KiB, chunked: no Content-Length to check up front
                yield b"z" * 16384

        r = await gw.request("POST", "/files/up", content=chunks())
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_body_too_large"
        r = await gw.request("POST", "/files/up", content=b"z" * 70000)  # Content-Length
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_body_too_large"


async def test_an_upstream_failing_mid_body_aborts_the_client_response(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/blob/cut": Reply(fault="truncated")})
        gw = await start_gateway(nursery, passthrough_config(up.url))
        with pytest.raises(httpx.RemoteProtocolError):
            await gw.get("/files/cut")
        r = await gw.get("/__gateway/health")  # the worker carries on
        assert r.status_code == 200


# --- the client's Content-Length is kept --------------------------------------------


@dataclass
class RawSeen:
    """What a strict upstream received: each request's raw head and body, and whether its
    body was complete (Content-Length octets) before the connection closed."""

    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    complete: list[bool] = field(default_factory=list)
    head_seen: trio.Event = field(default_factory=trio.Event)
    closed: trio.Event = field(default_factory=trio.Event)


async def serve_strict_upstream(
    seen: RawSeen, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """An HTTP/1.1 server like Python's http.server: it reads a body only by Content-Length
    and answers 411 to a chunked request (RFC 9112 section 6.3)."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            seen.heads.append(head)
            seen.head_seen.set()
            fields = dict(
                (n.strip().lower(), v.strip())
                for n, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
            )
            if b"transfer-encoding" in fields:
                await stream.send_all(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\n\r\n")
                return
            length = int(fields.get(b"content-length", b"0"))
            while len(body) < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                body += chunk
            seen.bodies.append(body)
            seen.complete.append(len(body) == length)
            if len(body) == length:
                reply = b'{"got": %d}' % len(body)
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(reply), reply)
                )
        finally:
            seen.closed.set()
            await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(f"http://127.0.0.1:{port}")
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def test_a_body_with_content_length_reaches_an_upstream_that_refuses_chunked(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen = RawSeen()
        url = await nursery.start(serve_strict_upstream, seen)
        gw = await start_gateway(nursery, passthrough_config(url))

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(4):
                yield b"z" * 50_000

        # streamed by the client, framed by its Content-Length: streamed upstream the same way
        r = await gw.request(
            "POST", "/files/a", content=chunks(), headers={"Content-Length": "200000"}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"got": 200_000}
        assert b"content-length: 200000" in seen.heads[0].lower()
        assert b"transfer-encoding" not in seen.heads[0].lower()
        assert seen.bodies == [b"z" * 200_000]


@pytest.mark.parametrize("backend_method", ["POST", "PUT", "PATCH"])
async def test_a_backend_method_of_its_own_keeps_the_clients_framing(
    nursery: trio.Nursery, backend_method: str
) -> None:
    """A backend `method` that takes a body (unused by passthrough, which relays the
    client's method) adds no `Content-Length: 0` next to the client's framing: with a body,
    the client's framing is the one framing sent."""
    with trio.fail_after(10):
        seen = RawSeen()
        url = await nursery.start(serve_strict_upstream, seen)
        gw = await start_gateway(nursery, passthrough_config(url, method=backend_method))
        r = await gw.request("POST", "/files/a", content=b"hello")
        assert r.status_code == 200, r.text
        assert r.json() == {"got": 5}
        head = seen.heads[0].lower()
        assert head.startswith(b"post /blob/a ")
        assert head.count(b"content-length") == 1 and b"content-length: 5" in head
        assert seen.bodies == [b"hello"]

        recorded, handler = recorder(lambda req: Reply(json={"got": len(req.body)}))
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, passthrough_config(up.url, method=backend_method))

        async def chunks():  # type: ignore[no-untyped-def]
            yield b"chunked "
            yield b"body"

        r = await gw.request("POST", "/files/b", content=chunks())  # no length: chunked
        assert r.status_code == 200, r.text
        assert recorded[0].body == b"chunked body"
        assert "content-length" not in recorded[0].headers
        empty = await gw.request("POST", "/files/c")
        assert empty.status_code == 200 and recorded[1].headers["content-length"] == "0"


async def test_a_client_body_shorter_than_its_content_length_never_looks_complete_upstream(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen = RawSeen()
        url = await nursery.start(serve_strict_upstream, seen)
        gw = await start_gateway(nursery, passthrough_config(url))
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            b"POST /files/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        await seen.head_seen.wait()  # the upstream call has started ...
        await stream.aclose()  # ... and the client leaves with 90 octets unsent
        await seen.closed.wait()
        assert seen.complete == [False]  # the upstream saw the connection end mid-body
        assert seen.bodies == [b"x" * 10]
