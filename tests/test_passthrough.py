"""Passthrough endpoints stream status, headers and body both ways without buffering."""

from __future__ import annotations

import resource

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
