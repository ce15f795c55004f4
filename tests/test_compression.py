"""Response compression through the gateway, over real sockets: negotiation by
Accept-Encoding (RFC 9110 section 12.5.3), 406, what is never compressed, Vary, HEAD,
ETags, passthrough streams compressed as they arrive, curl decoding every coding, a large
body compressed off the event loop; and the config's problems."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import zlib
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
import trio
import zstandard
from conftest import Gateway, backend_config, recorder, simple_config, start_gateway, start_upstream
from upstream import Reply

import gateway._compress
from gateway import load_config
from gateway._cli import main
from gateway._compress import compressing
from gateway._errors import ConfigError

TIMEOUT_S = 15
BIG = {"items": [{"id": i, "name": f"customer {i}", "tier": "gold"} for i in range(300)]}
BIG_BYTES = json.dumps(BIG).encode()
SMALL = {"id": 1, "name": "Ada"}


def decode(coding: str | None, data: bytes) -> bytes:
    if coding is None:
        return data
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert coding == "gzip", coding
    return zlib.decompress(data, 31)


class Answer:
    def __init__(self, response: httpx.Response, raw: bytes) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.raw = raw
        self.coding = response.headers.get("content-encoding")

    def body(self) -> bytes:
        return decode(self.coding, self.raw)

    def json(self) -> Any:
        return json.loads(self.body())


async def fetch(
    gw: Gateway, path: str, accept: str | None, method: str = "GET", **headers: str
) -> Answer:
    """One request with exactly this Accept-Encoding (None: no field at all), the body as
    it came on the wire."""
    request = gw.client.build_request(method, gw.url + path, headers=headers)
    del request.headers["accept-encoding"]  # httpx's own default
    if accept is not None:
        request.headers["accept-encoding"] = accept
    response = await gw.client.send(request, stream=True)
    try:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return Answer(response, raw)


def vary(answer: Answer) -> list[str]:
    return answer.headers.get_list("vary")


async def aggregated(nursery: trio.Nursery, **endpoint: Any) -> tuple[Gateway, Any]:
    """A gateway whose /api/{id} merges one upstream's /x/{id}: /x/big is BIG, /x/small
    SMALL, /x/fail a 503."""
    up = await start_upstream(
        nursery,
        {
            "/x/big": Reply(json=BIG),
            "/x/small": Reply(json=SMALL),
            "/x/fail": Reply(status=503, json={}),
        },
    )
    config = simple_config({"u": up}, [backend_config("a", "u", "/x/{id}")], **endpoint)
    return await start_gateway(nursery, config), up


# --- negotiation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("br;q=0.8, gzip;q=0.5, zstd;q=0.7", "br"),
        ("br;q=0.1, gzip", "gzip"),
        ("gzip, deflate, br, zstd", "br"),  # equal weights: the configured order
        ("zstd, gzip", "zstd"),
        ("*", "br"),
        ("*, br;q=0", "zstd"),  # q=0 excludes br even under *
        ("X-GZIP", "gzip"),
        ("identity", None),
        ("deflate", None),
        ("", None),  # an empty field: identity only
        (None, None),  # no field
    ],
)
async def test_the_coding_is_the_supported_one_the_client_weighs_highest(
    nursery: trio.Nursery, accept: str | None, coding: str | None
) -> None:
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery)
        answer = await fetch(gw, "/api/big", accept)
        assert answer.status == 200
        assert answer.coding == coding
        assert answer.json() == BIG
        assert vary(answer) == ["Accept-Encoding"]
        assert answer.headers["content-length"] == str(len(answer.raw))


async def test_the_configured_order_breaks_ties(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery, compression={"algorithms": ["gzip", "zstd"]})
        assert (await fetch(gw, "/api/big", "br, zstd, gzip")).coding == "gzip"
        assert (await fetch(gw, "/api/big", "br")).coding is None  # not configured here


@pytest.mark.parametrize("accept", ["identity;q=0", "*;q=0", "deflate, identity;q=0"])
async def test_nothing_acceptable_is_406_before_auth_and_no_upstream_is_called(
    nursery: trio.Nursery, tmp_path: Path, accept: str
) -> None:
    with trio.fail_after(TIMEOUT_S):
        seen, handler = recorder(lambda req: Reply(json=BIG))
        up = await start_upstream(nursery, handler)
        keys = tmp_path / "keys.txt"
        keys.write_text(f"acme {hashlib.sha256(b'k-1').hexdigest()}\n")
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")], auth="partners")
        config["auth"] = {"partners": {"api_key": {"keys_file": str(keys)}}}
        gw = await start_gateway(nursery, config)
        answer = await fetch(gw, "/api/1", accept)  # and no API key: 406 comes first
        assert answer.status == 406
        assert answer.json()["error"]["code"] == "not_acceptable"
        assert vary(answer) == ["Accept-Encoding"]
        assert seen == []
        # the same client accepting identity gets on to authentication
        assert (await fetch(gw, "/api/1", "*;q=0, identity")).status == 401


async def test_identity_refused_compresses_every_body_whatever_its_size_or_type(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(
            nursery,
            {
                "/x/small": Reply(json=SMALL),
                "/bin": Reply(body=b"\x00\x01" * 10, headers=[("Content-Type", "image/png")]),
            },
        )
        config = simple_config({"u": up}, [backend_config("a", "u", "/x/{id}")])
        config["endpoints"].append(
            {"path": "/bin", "passthrough": True, "backends": [backend_config("b", "u", "/bin")]}
        )
        gw = await start_gateway(nursery, config)
        small = await fetch(gw, "/api/small", "gzip, identity;q=0")
        assert small.coding == "gzip" and small.json() == SMALL
        png = await fetch(gw, "/bin", "zstd, *;q=0")
        assert png.coding == "zstd" and png.body() == b"\x00\x01" * 10
        # accepted identity: neither would be compressed
        assert (await fetch(gw, "/api/small", "gzip")).coding is None
        assert (await fetch(gw, "/bin", "zstd")).coding is None


def test_a_request_without_accept_encoding_gets_no_send_wrapper() -> None:
    """The hot path pays nothing but the endpoint's static Vary: no wrapper, no 406."""
    plan = load_config(
        "gw.yaml",
        {},
        text=json.dumps(
            {
                "version": 1,
                "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
                "endpoints": [{"path": "/a", "backends": [backend_config("a", "u", "/a")]}],
            }
        ),
    )
    endpoint = plan.endpoints[0]
    assert endpoint.compression is not None
    assert endpoint.response_fields == ((b"vary", b"Accept-Encoding"),)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("not called")

    scope = {"method": "GET", "headers": [(b"host", b"x"), (b"accept", b"*/*")]}
    assert compressing(send, endpoint.compression, scope) == (send, None)
    scope["headers"].append((b"accept-encoding", b"identity"))
    assert compressing(send, endpoint.compression, scope) == (send, None)


# --- what is compressed ---------------------------------------------------------------


async def test_a_body_below_min_size_goes_uncompressed_and_still_says_vary(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery)
        small = await fetch(gw, "/api/small", "gzip")
        assert small.coding is None and json.loads(small.raw) == SMALL
        assert small.headers["content-length"] == str(len(small.raw))
        assert vary(small) == ["Accept-Encoding"]
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery, compression={"min_size": 10})
        assert (await fetch(gw, "/api/small", "gzip")).coding == "gzip"


async def test_only_the_configured_types_are_compressed(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        text = b"<p>hello</p>" * 200
        up = await start_upstream(
            nursery,
            {
                "/html": Reply(body=text, headers=[("Content-Type", "Text/HTML; charset=utf-8")]),
                "/bin": Reply(body=text, headers=[("Content-Type", "application/octet-stream")]),
            },
        )
        config = simple_config({"u": up}, [backend_config("a", "u", "/html")], path="/html")
        config["endpoints"][0]["passthrough"] = True
        for path, types in (("/bin", None), ("/bin-typed", ["application/octet-stream"])):
            endpoint: dict[str, Any] = {
                "path": path,
                "passthrough": True,
                "backends": [backend_config("b", "u", "/bin")],
            }
            if types is not None:
                endpoint["compression"] = {"types": types}
            config["endpoints"].append(endpoint)
        gw = await start_gateway(nursery, config)
        html = await fetch(gw, "/html", "br")
        assert html.coding == "br" and html.body() == text  # text/*, any case, parameters
        plain = await fetch(gw, "/bin", "br")
        assert plain.coding is None and plain.raw == text
        assert vary(plain) == ["Accept-Encoding"]
        typed = await fetch(gw, "/bin-typed", "br")
        assert typed.coding == "br" and typed.body() == text


async def test_an_error_of_the_endpoint_is_compressed_when_large_enough(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery, compression={"min_size": 64})
        failed = await fetch(gw, "/api/fail", "gzip")
        assert failed.status == 502
        assert failed.coding == "gzip"
        assert failed.json()["error"]["code"] == "all_backends_failed"
        assert vary(failed) == ["Accept-Encoding"]


async def test_204_and_304_are_never_compressed_and_304_keeps_the_weak_validator(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(
            nursery,
            {
                "/empty": Reply(status=204, body=b"", headers=[("Content-Type", "text/plain")]),
                "/cached": Reply(
                    status=304, body=b"", headers=[("ETag", '"v1"'), ("Cache-Control", "max-age=9")]
                ),
            },
        )
        config = {
            "version": 1,
            "upstreams": {"u": {"url": up.url}},
            "endpoints": [
                {"path": p, "passthrough": True, "backends": [backend_config("b", "u", p)]}
                for p in ("/empty", "/cached")
            ],
        }
        gw = await start_gateway(nursery, config)
        empty = await fetch(gw, "/empty", "gzip, identity;q=0")
        assert (empty.status, empty.coding, empty.raw) == (204, None, b"")
        assert vary(empty) == ["Accept-Encoding"]
        cached = await fetch(gw, "/cached", "gzip", **{"If-None-Match": 'W/"v1"'})
        assert (cached.status, cached.coding, cached.raw) == (304, None, b"")
        # the 200 it stands for went out compressed with W/"v1" (RFC 9110 section 15.4.5)
        assert cached.headers["etag"] == 'W/"v1"'
        assert vary(cached) == ["Accept-Encoding"]


async def test_a_passthrough_body_already_encoded_is_left_as_it_is(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        encoded = zlib.compress(BIG_BYTES, 9, wbits=31)
        up = await start_upstream(
            nursery,
            {
                "/gz": Reply(
                    body=encoded,
                    headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
                )
            },
        )
        config = simple_config({"u": up}, [backend_config("b", "u", "/gz")], path="/gz")
        config["endpoints"][0]["passthrough"] = True
        gw = await start_gateway(nursery, config)
        answer = await fetch(gw, "/gz", "br, zstd, gzip")
        assert answer.headers.get_list("content-encoding") == ["gzip"]
        assert answer.raw == encoded
        assert vary(answer) == ["Accept-Encoding"]


async def test_an_identity_content_encoding_is_compressed(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        gw = await passthrough_of(
            nursery,
            Reply(json=BIG, headers=[("Content-Encoding", "identity")]),
        )
        answer = await fetch(gw, "/p", "zstd")
        assert answer.headers.get_list("content-encoding") == ["zstd"]
        assert answer.json() == BIG


async def test_no_transform_is_respected(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(
            nursery,
            {"/nt": Reply(json=BIG, headers=[("Cache-Control", "public, No-Transform")])},
        )
        config = simple_config({"u": up}, [backend_config("b", "u", "/nt")], path="/nt")
        config["endpoints"][0]["passthrough"] = True
        gw = await start_gateway(nursery, config)
        answer = await fetch(gw, "/nt", "gzip")
        assert answer.coding is None and answer.raw == BIG_BYTES
        # identity refused: never a silent identity, but the 406 of the request's start
        refused = await fetch(gw, "/nt", "gzip, identity;q=0")
        assert refused.status == 406 and refused.coding is None
        assert refused.json()["error"]["code"] == "not_acceptable"
        assert "no-transform" in refused.json()["error"]["message"]
        assert refused.headers["content-type"] == "application/json"
        assert "cache-control" not in refused.headers
        assert vary(refused) == ["Accept-Encoding"]
        head = await fetch(gw, "/nt", "gzip, identity;q=0", method="HEAD")
        assert head.status == 406 and head.raw == b""
        assert head.headers["content-length"] == refused.headers["content-length"]


async def passthrough_of(nursery: trio.Nursery, reply: Reply, **endpoint: Any) -> Gateway:
    """A gateway whose /p passes the upstream's ``reply`` through."""
    up = await start_upstream(nursery, {"/p": reply})
    config = simple_config({"u": up}, [backend_config("b", "u", "/p")], path="/p", **endpoint)
    config["endpoints"][0]["passthrough"] = True
    return await start_gateway(nursery, config)


async def test_identity_refused_and_a_body_that_may_not_be_compressed_is_406(
    nursery: trio.Nursery,
) -> None:
    """A part (206) or an upstream coding the client excludes: 406 with the endpoint's
    response and CORS fields, the body dropped; a coding it accepts goes as it is."""
    with trio.fail_after(TIMEOUT_S):
        encoded = zlib.compress(BIG_BYTES, 9, wbits=31)
        gz = await passthrough_of(
            nursery,
            Reply(
                body=encoded,
                headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
            ),
            response_headers={"X-Frame-Options": "DENY"},
            cors={"allow_origins": ["https://app.example"]},
        )
        origin = {"Origin": "https://app.example"}
        refused = await fetch(gz, "/p", "br, identity;q=0", **origin)
        assert refused.status == 406
        error = refused.json()["error"]
        assert error["code"] == "not_acceptable" and "gzip" in error["message"]
        assert refused.headers["x-frame-options"] == "DENY"
        assert refused.headers["access-control-allow-origin"] == "https://app.example"
        assert "content-encoding" not in refused.headers
        for accept in ("gzip, identity;q=0", "*, identity;q=0", "br, *;q=0.1, identity;q=0"):
            kept = await fetch(gz, "/p", accept)
            assert kept.status == 200 and kept.raw == encoded, accept
        excluded = await fetch(gz, "/p", "*, gzip;q=0, identity;q=0")
        assert excluded.status == 406
        # a stream: the 406 goes at its head, not after a body that may never end
        stream = await passthrough_of(
            nursery,
            Reply(
                headers=[("Content-Type", "text/event-stream"), ("Content-Encoding", "br")],
                chunks=3,
                gate=trio.Event(),  # never set: the upstream holds the rest back
            ),
        )
        assert (await fetch(stream, "/p", "gzip, identity;q=0")).status == 406
        part = await passthrough_of(
            nursery,
            Reply(
                status=206,
                body=BIG_BYTES[:2000],
                headers=[("Content-Type", "application/json"), ("Content-Range", "bytes 0-1999/*")],
            ),
        )
        assert (await fetch(part, "/p", "zstd, identity;q=0")).status == 406
        assert (await fetch(part, "/p", "zstd")).raw == BIG_BYTES[:2000]


async def test_strong_etags_of_compressed_answers_become_weak(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        tagged = [("ETag", '"v7"'), ("Accept-Ranges", "bytes")]
        up = await start_upstream(
            nursery,
            {
                "/x/big": Reply(json=BIG, headers=tagged),
                "/x/small": Reply(json=SMALL, headers=tagged),
            },
        )
        config = simple_config(
            {"u": up}, [backend_config("a", "u", "/x/{id}", return_headers=["ETag"])]
        )
        config["endpoints"].append(
            {"path": "/raw", "passthrough": True, "backends": [backend_config("b", "u", "/x/big")]}
        )
        gw = await start_gateway(nursery, config)
        for path in ("/api/big", "/raw"):
            compressed = await fetch(gw, path, "zstd")
            assert compressed.coding == "zstd" and compressed.json() == BIG
            assert compressed.headers["etag"] == 'W/"v7"'
            assert "accept-ranges" not in compressed.headers  # ranges of the identity bytes
            identity = await fetch(gw, path, None)
            assert identity.headers["etag"] == '"v7"'
        small = await fetch(gw, "/api/small", "zstd")  # not compressed: the validator stays
        assert small.coding is None and small.headers["etag"] == '"v7"'


# --- Vary -----------------------------------------------------------------------------


async def test_vary_is_merged_with_an_upstreams_into_one_field(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(
            nursery,
            {
                "/origin": Reply(json=BIG, headers=[("Vary", "Origin"), ("Vary", "Cookie")]),
                "/already": Reply(json=SMALL, headers=[("Vary", "accept-encoding")]),
                "/star": Reply(json=BIG, headers=[("Vary", "*")]),
            },
        )
        config = {
            "version": 1,
            "upstreams": {"u": {"url": up.url}},
            "endpoints": [
                {"path": p, "passthrough": True, "backends": [backend_config("b", "u", p)]}
                for p in ("/origin", "/already", "/star")
            ],
        }
        gw = await start_gateway(nursery, config)
        for accept in (None, "gzip"):
            origin = await fetch(gw, "/origin", accept)
            assert vary(origin) == ["Origin, Cookie, Accept-Encoding"], accept
            assert vary(await fetch(gw, "/already", accept)) == ["accept-encoding"]
            assert vary(await fetch(gw, "/star", accept)) == ["*"]
        refused = await fetch(gw, "/origin", "*;q=0")  # the gateway's own 406
        assert refused.status == 406 and vary(refused) == ["Accept-Encoding"]


def test_a_configured_vary_takes_accept_encoding_in_at_load() -> None:
    doc = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "defaults": {"response_headers": {"Vary": "Origin"}},
        "endpoints": [
            {"path": "/a", "backends": [backend_config("a", "u", "/a")]},
            {"path": "/p", "passthrough": True, "backends": [backend_config("a", "u", "/a")]},
            {"path": "/off", "compression": False, "backends": [backend_config("a", "u", "/a")]},
        ],
    }
    plan = load_config("gw.yaml", {}, text=json.dumps(doc))
    merged = ((b"Vary", b"Origin, Accept-Encoding"),)
    assert plan.endpoints[0].response_fields == merged
    # the configured field replaces a passthrough upstream's: nothing to merge per response
    assert plan.endpoints[1].response_fields == merged
    assert plan.endpoints[1].compression is not None
    assert not plan.endpoints[1].compression.merge_vary
    assert plan.endpoints[2].response_fields == ((b"Vary", b"Origin"),)


async def test_a_vary_returned_by_a_backend_is_merged_per_answer(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/x": Reply(json=BIG, headers=[("Vary", "Cookie")])})
        config = simple_config(
            {"u": up}, [backend_config("a", "u", "/x", return_headers=["Vary"])], path="/v"
        )
        gw = await start_gateway(nursery, config)
        endpoint = gw.app.plan.endpoints[0]
        assert endpoint.compression is not None and endpoint.compression.merge_vary
        assert endpoint.response_fields == ()  # no static Vary beside the backend's
        for accept in (None, "br"):
            answer = await fetch(gw, "/v", accept)
            assert vary(answer) == ["Cookie, Accept-Encoding"], accept
            assert answer.json() == BIG


async def test_an_endpoint_with_compression_off_does_not_negotiate(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery, compression=False)
        answer = await fetch(gw, "/api/big", "gzip, identity;q=0")
        assert answer.status == 200 and answer.coding is None
        assert "vary" not in answer.headers


async def test_defaults_off_and_an_endpoint_turning_it_on(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/x": Reply(json=BIG)})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")], path="/off")
        config["defaults"] = {"compression": False}
        config["endpoints"].append(
            {"path": "/on", "compression": True, "backends": [backend_config("a", "u", "/x")]}
        )
        gw = await start_gateway(nursery, config)
        assert (await fetch(gw, "/off", "br")).coding is None
        on = await fetch(gw, "/on", "br")
        assert on.coding == "br" and on.json() == BIG


# --- HEAD -----------------------------------------------------------------------------


async def test_head_has_the_head_get_would_have_and_no_body(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery)
        got = await fetch(gw, "/api/big", "br")
        head = await fetch(gw, "/api/big", "br", method="HEAD")
        assert head.status == 200 and head.raw == b""
        assert head.coding == got.coding == "br"
        assert vary(head) == vary(got) == ["Accept-Encoding"]
        # GET's exact Content-Length, not a chunked head (RFC 9110 section 9.3.2)
        assert head.headers["content-length"] == got.headers["content-length"]
        assert "transfer-encoding" not in head.headers
        small_get = await fetch(gw, "/api/small", "br")
        small_head = await fetch(gw, "/api/small", "br", method="HEAD")
        assert small_head.coding is None and small_head.raw == b""
        assert small_head.headers["content-length"] == small_get.headers["content-length"]
        assert vary(small_head) == ["Accept-Encoding"]


async def test_head_of_a_passthrough_endpoint(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(
            nursery, {"/x": Reply(json=BIG, headers=[("ETag", '"e"'), ("Vary", "Origin")])}
        )
        config = simple_config({"u": up}, [backend_config("b", "u", "/x")], path="/x")
        config["endpoints"][0]["passthrough"] = True
        gw = await start_gateway(nursery, config)
        head = await fetch(gw, "/x", "gzip", method="HEAD")
        got = await fetch(gw, "/x", "gzip")
        assert head.raw == b"" and got.json() == BIG
        for name in ("content-encoding", "etag", "vary", "content-type"):
            assert head.headers.get_list(name) == got.headers.get_list(name), name
        assert head.headers["etag"] == 'W/"e"'
        assert "content-length" not in head.headers


# --- passthrough streams --------------------------------------------------------------


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
async def test_a_passthrough_stream_is_compressed_as_it_arrives(
    nursery: trio.Nursery, coding: str
) -> None:
    """The first chunk reaches the client, decodable, while the upstream still holds the
    rest back: the encoder flushes every chunk."""
    with trio.fail_after(TIMEOUT_S):
        gate = trio.Event()
        chunk = b"data: " + b"event " * 500 + b"\n\n"
        up = await start_upstream(
            nursery,
            {
                "/events": Reply(
                    chunks=3,
                    chunk_data=chunk,
                    gate=gate,
                    headers=[("Content-Type", "text/event-stream")],
                )
            },
        )
        config = simple_config({"u": up}, [backend_config("b", "u", "/events")], path="/events")
        config["endpoints"][0]["passthrough"] = True
        gw = await start_gateway(nursery, config)
        if coding == "br":
            decoder: Any = brotli.Decompressor()
            step = decoder.process
        elif coding == "zstd":
            step = zstandard.ZstdDecompressor().decompressobj().decompress
        else:
            step = zlib.decompressobj(31).decompress
        request = gw.client.build_request("GET", gw.url + "/events")
        request.headers["accept-encoding"] = coding
        response = await gw.client.send(request, stream=True)
        assert response.headers["content-encoding"] == coding
        assert "content-length" not in response.headers
        received = b""
        raw = response.aiter_raw()
        async for data in raw:
            received += step(data)
            if len(received) >= len(chunk):
                break
        assert received == chunk
        assert not gate.is_set()  # the upstream still holds the rest
        gate.set()
        async for data in raw:
            received += step(data)
        await response.aclose()
        assert received == chunk * 3


# --- curl, and a large body -----------------------------------------------------------


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
async def test_curl_compressed_gets_the_original_json_back(
    nursery: trio.Nursery, coding: str
) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed (scripts/test installs it)"
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery)
        # --compressed decodes whatever coding came; the header asks for this one only
        command = [curl, "-sS", "--compressed", "-H", f"Accept-Encoding: {coding}", "-D", "-"]
        result = await trio.run_process([*command, gw.url + "/api/big"], capture_stdout=True)
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        assert f"content-encoding: {coding}".encode() in head.lower()
        assert json.loads(body) == BIG


async def test_a_large_body_is_compressed_off_the_event_loop(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a 4 MiB body is being compressed, the gateway answers another request; the
    body arrives whole and correct."""
    entered = trio.Event()
    release = threading.Event()
    real_encoder = gateway._compress.whole_encoder

    def held_encoder(coding: str, level: int, size: int) -> gateway._compress.StreamEncoder:
        encoder = real_encoder(coding, level, size)

        def held_chunk(data: bytes) -> bytes:
            # raises RuntimeError on the event loop's own thread: only a worker may call it
            trio.from_thread.run_sync(entered.set)
            assert release.wait(TIMEOUT_S)
            return encoder.chunk(data)

        return gateway._compress.StreamEncoder(held_chunk, encoder.finish)

    monkeypatch.setattr(gateway._compress, "whole_encoder", held_encoder)
    huge = {"items": [{"id": i, "name": f"customer {i}", "tier": "gold"} for i in range(100_000)]}
    assert len(json.dumps(huge)) > 4 * 1024 * 1024
    with trio.fail_after(TIMEOUT_S):
        up = await start_upstream(nursery, {"/x/huge": Reply(json=huge)})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x/{id}")])
        config["defaults"] = {"max_response_size": "64MiB"}
        gw = await start_gateway(nursery, config)
        answers: list[Answer] = []

        async def big() -> None:
            answers.append(await fetch(gw, "/api/huge", "br"))

        nursery.start_soon(big)
        await entered.wait()
        health = await gw.get("/__gateway/health")  # answered while compression is held
        assert health.status_code == 200
        release.set()
        while not answers:
            await trio.lowlevel.checkpoint()
        answer = answers[0]
        assert answer.coding == "br" and answer.json() == huge
        assert answer.headers["content-length"] == str(len(answer.raw))


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
async def test_a_body_over_a_slice_is_compressed_a_slice_at_a_time(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, coding: str
) -> None:
    """The same bytes as whole (HEAD gives GET's exact length), and decodable."""
    monkeypatch.setattr(gateway._compress, "SLICE_BYTES", 4096)
    with trio.fail_after(TIMEOUT_S):
        gw, _ = await aggregated(nursery)
        got = await fetch(gw, "/api/big", coding)
        head = await fetch(gw, "/api/big", coding, method="HEAD")
        assert got.coding == coding and got.json() == BIG
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.raw))


async def test_a_cancelled_request_stops_compressing_within_one_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker thread cannot be stopped, but the next slice is not started."""
    monkeypatch.setattr(gateway._compress, "SLICE_BYTES", 4096)
    real_encoder = gateway._compress.whole_encoder
    slices: list[int] = []
    scope = trio.CancelScope()

    def counting(coding: str, level: int, size: int) -> gateway._compress.StreamEncoder:
        encoder = real_encoder(coding, level, size)

        def chunk(data: bytes) -> bytes:
            slices.append(len(data))
            trio.from_thread.run_sync(scope.cancel)  # the client left meanwhile
            return encoder.chunk(data)

        return gateway._compress.StreamEncoder(chunk, encoder.finish)

    monkeypatch.setattr(gateway._compress, "whole_encoder", counting)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    policy = (
        load_config(
            "gw.yaml",
            {},
            text=json.dumps(
                {
                    "version": 1,
                    "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
                    "endpoints": [{"path": "/a", "backends": [backend_config("a", "u", "/a")]}],
                }
            ),
        )
        .endpoints[0]
        .compression
    )
    assert policy is not None
    scope_of_request = {"headers": [(b"accept-encoding", b"gzip")], "method": "GET"}
    wrapped, _ = compressing(send, policy, scope_of_request)
    body = BIG_BYTES * 4
    assert len(body) > 8 * 4096
    with scope:
        start = [(b"content-type", b"application/json")]
        await wrapped({"type": "http.response.start", "status": 200, "headers": start})
        await wrapped({"type": "http.response.body", "body": body})
    assert scope.cancelled_caught
    assert slices == [4096] and sent == []


# --- the config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "path", "problem"),
    [
        ({"algorithms": ["br", "deflate"]}, "algorithms[1]", "unknown algorithm 'deflate'"),
        ({"algorithms": ["gzip", "GZIP"]}, "algorithms[1]", "GZIP is listed twice"),
        ({"algorithms": []}, "algorithms", "write compression: false"),
        ({"levels": {"br": 12}}, "levels.br", "brotli levels go from 0 to 11"),
        ({"levels": {"gzip": 0}}, "levels.gzip", "gzip levels go from 1 to 9"),
        ({"levels": {"zstd": 22}}, "levels.zstd", "zstd levels go from 1 to 19"),
        ({"levels": {"lzma": 1}}, "levels.lzma", "unknown algorithm 'lzma'"),
        (
            {"algorithms": ["gzip"], "levels": {"br": 5}},
            "levels.br",
            "br is not in algorithms",
        ),
        ({"types": ["json"]}, "types[0]", "not a media type pattern"),
        ({"types": ["text/plain; charset=utf-8"]}, "types[0]", "without parameters"),
        ({"types": ["*/json"]}, "types[0]", "not a media type pattern"),
        ({"types": ["text/*", "Text/*"]}, "types[1]", "Text/* is listed twice"),
        ({"types": []}, "types", "write compression: false"),
    ],
)
def test_compression_problems_are_reported_with_their_path_once(
    settings: dict[str, Any], path: str, problem: str
) -> None:
    backend = [backend_config("a", "u", "/a")]
    doc = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "defaults": {"compression": settings},
        # two endpoints: a problem of defaults is still one problem
        "endpoints": [
            {"path": "/a", "backends": backend},
            {"path": "/b", "backends": backend},
            {"path": "/c", "backends": backend, "compression": settings},
        ],
    }
    with pytest.raises(ConfigError) as caught:
        load_config("gw.yaml", {}, text=json.dumps(doc))
    messages = [str(p) for p in caught.value.problems]
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"gw.yaml: defaults.compression.{path}: "), messages
    assert messages[1].startswith(f"gw.yaml: endpoints[2].compression.{path}: "), messages
    assert all(problem in m for m in messages), messages


def test_gateway_check_refuses_a_bad_compression_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "version: 1\n"
        "upstreams: {u: {url: 'http://127.0.0.1:9'}}\n"
        "defaults:\n  compression: {levels: {br: 11, gzip: 10}}\n"
        "endpoints:\n  - {path: /a, backends: [{name: a, upstream: u, path: /a}]}\n"
    )
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: defaults.compression.levels.gzip: gzip levels go from 1 to 9"
    ]


@pytest.mark.parametrize("zero", [0, "0", "0B", "0KiB"])
def test_min_size_zero_compresses_every_body(zero: object) -> None:
    doc = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "defaults": {"compression": {"min_size": zero}},
        "endpoints": [{"path": "/a", "backends": [backend_config("a", "u", "/a")]}],
    }
    policy = load_config("gw.yaml", {}, text=json.dumps(doc)).endpoints[0].compression
    assert policy is not None and policy.min_size_bytes == 0
    doc["defaults"] = {"compression": {"min_size": -1}}
    with pytest.raises(ConfigError, match="greater than zero"):
        load_config("gw.yaml", {}, text=json.dumps(doc))


def test_min_size_and_levels_compile_into_the_plan() -> None:
    doc = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [
            {
                "path": "/a",
                "backends": [backend_config("a", "u", "/a")],
                "compression": {
                    "algorithms": ["zstd", "br"],
                    "min_size": "4KiB",
                    "levels": {"br": 6},
                },
            }
        ],
    }
    policy = load_config("gw.yaml", {}, text=json.dumps(doc)).endpoints[0].compression
    assert policy is not None
    assert policy.codings == ("zstd", "br")
    assert policy.levels == (3, 6)
    assert policy.min_size_bytes == 4096
    assert policy.types.patterns == ("application/json", "text/*")
