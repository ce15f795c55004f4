"""Hostile clients and upstreams: limits answer with clear statuses, nothing leaks through."""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
from conftest import (
    backend_config,
    raw_request,
    recorder,
    simple_config,
    start_gateway,
    start_upstream,
)
from upstream import RecordedRequest, Reply

from gateway._rules.forwarded import client_info, parse_networks


async def test_upstreams_get_forwarding_headers_and_client_claims_are_replaced(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/x")])
        )
        await gw.get(
            "/api/1",
            headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "Via": "1.1 evil"},
        )
        headers = seen[-1].headers
        assert headers["x-forwarded-for"] == "127.0.0.1"  # the claim is replaced
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-host"] == gw.url.removeprefix("http://")
        assert headers["via"] == "1.1 trio-gateway"


async def test_a_trusted_proxy_chain_is_believed(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["server"] = {"trusted_proxies": ["127.0.0.0/8"]}
        gw = await start_gateway(nursery, config)
        await gw.get(
            "/api/1", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        )
        headers = seen[-1].headers
        assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert headers["x-forwarded-proto"] == "https"


def test_the_client_is_the_first_untrusted_hop_from_the_right() -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    xff = [(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.0.0.5")]
    info = client_info("10.0.0.1", "http", xff, trusted)
    assert info.address == "2.2.2.2"  # 1.1.1.1 is 2.2.2.2's own claim
    assert dict(info.headers)[b"x-forwarded-for"] == b"2.2.2.2, 10.0.0.5, 10.0.0.1"
    untrusted = client_info("8.8.8.8", "http", xff, trusted)
    assert untrusted.address == "8.8.8.8"
    assert dict(untrusted.headers)[b"x-forwarded-for"] == b"8.8.8.8"


async def test_limits_answer_414_431_and_408(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["endpoints"].append(
            {
                "path": "/post/{id}",
                "method": "POST",
                "backends": [backend_config("a", "u", "/x", method="POST", body="forward")],
            }
        )
        config["server"] = {
            "max_url_length": 1024,
            "max_header_size": "4KiB",
            "body_timeout": "300ms",
        }
        gw = await start_gateway(nursery, config)

        r = await raw_request(gw.url, "/api/1?q=" + "a" * 1100)
        assert r.status == 414
        assert r.json()["error"]["code"] == "url_too_long"

        r = await gw.get("/api/1", headers={"X-Big": "b" * 6000})
        assert r.status_code == 431
        assert r.json()["error"]["code"] == "headers_too_large"

        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(
                b'POST /post/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"a":'
            )  # and then nothing: the body never completes
            start = trio.current_time()
            data = b""
            while b"\r\n\r\n" not in data or b"request_timeout" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 408")
        assert 0.25 < trio.current_time() - start < 2
        assert up.requests == []


async def test_passthrough_keeps_the_clients_framing_and_hides_upstream_gateway_headers(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):

        async def handler(req: RecordedRequest) -> Reply:
            return Reply(
                json={
                    "cl": req.headers.get("content-length"),
                    "te": req.headers.get("transfer-encoding"),
                },
                headers=[("X-Gateway-Complete", "forged")],
            )

        up = await start_upstream(nursery, handler)
        config = {
            "version": 1,
            "upstreams": {"u": {"url": up.url}},
            "endpoints": [
                {
                    "path": "/f",
                    "method": "POST",
                    "passthrough": True,
                    "backends": [backend_config("f", "u", "/f")],
                }
            ],
        }
        gw = await start_gateway(nursery, config)
        r = await gw.request("POST", "/f", content=b"x" * 1000)
        assert r.json() == {"cl": "1000", "te": None}  # the transport sends exactly 1000

        async def chunks():  # type: ignore[no-untyped-def]
            yield b"x" * 10

        r = await gw.request("POST", "/f", content=chunks())  # the client sent it chunked
        assert r.json() == {"cl": None, "te": "chunked"}
        assert "x-gateway-complete" not in r.headers
        assert r.headers["x-gateway-backends"] == "f=ok"


async def test_the_merged_total_of_upstream_bodies_is_bounded(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        big = b'"' + b"x" * 60_000 + b'"'
        up = await start_upstream(
            nursery,
            {"/a": Reply(body=big), "/b": Reply(body=big, delay_s=0.1), "/c": Reply(json={"c": 1})},
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("a", "u", "/a"),
                backend_config("b", "u", "/b"),
                backend_config("c", "u", "/c"),
            ],
        )
        config["defaults"] = {"max_response_size": "100KiB", "max_total_response_size": "100KiB"}
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        # each body fits its own limit; the second one to arrive crosses the request's total
        assert r.headers["x-gateway-backends"] == "a=ok, b=too_large, c=ok"


async def test_https_upstreams_are_verified_against_their_ca_file(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    import ssl

    import trustme
    from upstream import serve_upstream

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with trio.fail_after(10):
        up = await nursery.start(
            partial(serve_upstream, {"/x": Reply(json={"tls": True})}, ssl_context=server_ctx)
        )
        other = await nursery.start(
            partial(serve_upstream, {"/x": Reply(json={"tls": True})}, ssl_context=server_ctx)
        )
        assert up.url.startswith("https://")
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["upstreams"]["untrusted"] = {"url": other.url}
        config["endpoints"][0]["backends"].append(backend_config("b", "untrusted", "/x", group="b"))
        config["upstreams"]["u"]["ca_file"] = str(ca_file)
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        # the same certificate: trusted through the CA file, refused with the system's CAs
        assert r.headers["x-gateway-backends"] == "a=ok, b=unreachable"
        assert r.json() == {"tls": True}


async def test_redirects_are_followed_only_when_asked_and_only_on_the_same_origin(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        other = await start_upstream(nursery, {"/elsewhere": Reply(json={"leaked": True})})
        up = await start_upstream(
            nursery,
            {
                "/old": Reply(status=301, headers=[("Location", "/new")]),
                "/new": Reply(json={"moved": True}),
                "/away": Reply(status=302, headers=[("Location", other.url + "/elsewhere")]),
                "/loop": Reply(status=307, headers=[("Location", "/loop")]),
            },
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("off", "u", "/old", group="off"),
                backend_config("on", "u", "/old", follow_redirects=True, group="on"),
                backend_config("away", "u", "/away", follow_redirects=True, group="away"),
                backend_config(
                    "loop", "u", "/loop", follow_redirects=True, max_redirects=2, group="loop"
                ),
            ],
        )
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == (
            "off=http_301, on=ok, away=http_302, loop=http_307"
        )
        assert r.json() == {"on": {"moved": True}}
        assert other.requests == []
        assert up.calls("/loop") == 3  # the first call and 2 redirects


async def test_proxy_environment_variables_are_ignored(
    nursery: trio.Nursery, monkeypatch: Any
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"direct": True})})
        # a proxy that would refuse everything: if it were used, the call would fail
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
        monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:1")
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/x")])
        )
        r = await gw.get("/api/1")
        assert r.json() == {"direct": True}


async def test_secrets_never_reach_responses_or_logs(nursery: trio.Nursery, caplog: Any) -> None:
    secret = "s3cr3t-t0ken-value"
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/ok": Reply(json={"ok": 1}), "/boom": Reply(fault="garbage")}
        )
        config = simple_config(
            {"u": up},
            [backend_config("ok", "u", "/ok"), backend_config("boom", "u", "/boom", required=True)],
        )
        config["upstreams"]["u"]["headers"] = {"Authorization": "Bearer ${TOKEN}"}
        gw = await start_gateway(nursery, config, env={"TOKEN": secret})
        r = await gw.get("/api/1")
        assert r.status_code == 502
        assert secret not in r.text
        assert all(secret not in v for v in r.headers.values())
        assert up.requests[0].headers["authorization"] == f"Bearer {secret}"
    assert secret not in caplog.text


async def test_a_bug_while_shaping_one_result_fails_only_that_backend(
    nursery: trio.Nursery, monkeypatch: Any
) -> None:
    from gateway._rules.transform import Transform

    original = Transform.shape

    def broken(self: Transform, value: Any) -> Any:
        if isinstance(value, dict) and value.get("trigger"):
            raise KeyError("a bug")
        return original(self, value)

    monkeypatch.setattr(Transform, "shape", broken)
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/bad": Reply(json={"trigger": True}), "/good": Reply(json={"good": 1})}
        )
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [backend_config("bad", "u", "/bad"), backend_config("good", "u", "/good")],
            ),
        )
        for _ in range(3):
            r = await gw.get("/api/1")
            assert r.status_code == 200
            assert r.headers["x-gateway-backends"] == "bad=internal_error, good=ok"
            assert r.json() == {"good": 1}
