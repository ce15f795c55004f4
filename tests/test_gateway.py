"""End-to-end behaviour of aggregated endpoints: real upstreams, real gateway, real sockets."""

from __future__ import annotations

import trio
from conftest import (
    backend_config,
    raw_request,
    recorder,
    simple_config,
    start_gateway,
    start_upstream,
)
from upstream import Reply


async def test_results_merge_in_config_order_not_arrival_order(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        slow = await start_upstream(nursery, {"/a": Reply(json={"k": "slow", "a": 1}, delay_s=0.2)})
        fast = await start_upstream(nursery, {"/b": Reply(json={"k": "fast", "b": 2})})
        gw = await start_gateway(
            nursery,
            simple_config(
                {"slow": slow, "fast": fast},
                [backend_config("first", "slow", "/a"), backend_config("second", "fast", "/b")],
            ),
        )
        r = await gw.get("/api/1")
        assert r.status_code == 200
        # "second" finished first but is listed later: its "k" wins, and key order follows config
        assert r.json() == {"k": "fast", "a": 1, "b": 2}
        assert list(r.json()) == ["k", "a", "b"]
        assert r.headers["x-gateway-complete"] == "true"
        assert r.headers["x-gateway-backends"] == "first=ok, second=ok"


async def test_groups_and_non_object_results_are_placed_by_config(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/p": Reply(json={"name": "Ada"}),
                "/q": Reply(json={"tier": "gold"}),
                "/list": Reply(json=[1, 2]),
                "/n": Reply(json=7),
            },
        )
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [
                    backend_config("p", "u", "/p", group="user"),
                    backend_config("q", "u", "/q", group="user"),
                    backend_config("items", "u", "/list"),
                    backend_config("count", "u", "/n", group="stats"),
                ],
            ),
        )
        r = await gw.get("/api/1")
        assert r.json() == {"user": {"name": "Ada", "tier": "gold"}, "items": [1, 2], "stats": 7}


async def test_transforms_select_allow_rename_group(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        body = {
            "data": {
                "name": "Ada",
                "email": "a@x",
                "tier": "gold",
                "secret": "s",
                "address": {"city": "L", "zip": "N"},
            }
        }
        up = await start_upstream(nursery, {"/users/1": Reply(json=body)})
        gw = await start_gateway(
            nursery,
            simple_config(
                {"users": up},
                [
                    backend_config(
                        "profile",
                        "users",
                        "/users/{id}",
                        select="data",
                        allow=["name", "tier", "address.city"],
                        rename={"tier": "level"},
                        group="profile",
                    )
                ],
            ),
        )
        r = await gw.get("/api/1")
        assert r.json() == {"profile": {"name": "Ada", "level": "gold", "address": {"city": "L"}}}


async def test_deny_applies_to_each_array_element(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        items = [{"id": 1, "cost": 5, "x": 1}, {"id": 2, "cost": 6}]
        up = await start_upstream(nursery, {"/o": Reply(json={"items": items})})
        gw = await start_gateway(
            nursery,
            simple_config(
                {"o": up},
                [
                    backend_config(
                        "orders", "o", "/o", select="items", deny=["cost"], group="orders"
                    )
                ],
            ),
        )
        r = await gw.get("/api/1")
        assert r.json() == {"orders": [{"id": 1, "x": 1}, {"id": 2}]}


async def test_each_failure_becomes_its_outcome(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/ok": Reply(json={"ok": True}),
                "/404": Reply(status=404, json={"error": "nope"}),
                "/500": Reply(status=500),
                "/html": Reply(fault="not_json"),
                "/reset": Reply(fault="reset"),
                "/garbage": Reply(fault="garbage"),
                "/truncated": Reply(fault="truncated"),
                "/slow": Reply(delay_s=5),
                "/noselect": Reply(json={"other": 1}),
                "/big": Reply(body=b"[" + b"1," * 40_000 + b"1]"),
            },
        )
        names = ["404", "500", "html", "reset", "garbage", "truncated", "slow", "noselect", "big"]
        backends = [backend_config("ok", "u", "/ok")]
        for name in names:
            extra = {}
            if name == "slow":
                extra["timeout"] = "200ms"
            if name == "noselect":
                extra["select"] = "data"
            backends.append(backend_config(f"b{name}", "u", f"/{name}", **extra))
        config = simple_config({"u": up}, backends)
        config["upstreams"]["u"]["max_response_size"] = "64KiB"
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.status_code == 200
        assert r.headers["x-gateway-complete"] == "false"
        assert r.headers["x-gateway-backends"] == (
            "ok=ok, b404=http_404, b500=http_500, bhtml=invalid_response, breset=unreachable, "
            "bgarbage=unreachable, btruncated=unreachable, bslow=timeout, "
            "bnoselect=invalid_response, bbig=too_large"
        )
        assert r.json() == {"ok": True}


async def test_connection_refused_is_unreachable(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/ok": Reply(json={"a": 1})})
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        dead_port = listener.getsockname()[1]
        listener.close()  # nothing listens there now
        config = simple_config(
            {"u": up}, [backend_config("a", "u", "/ok"), backend_config("dead", "dead", "/x")]
        )
        config["upstreams"]["dead"] = {"url": f"http://127.0.0.1:{dead_port}"}
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.status_code == 200
        assert r.headers["x-gateway-backends"] == "a=ok, dead=unreachable"


async def test_default_replaces_a_failed_optional_backend(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/p": Reply(json={"name": "Ada"}), "/o": Reply(status=503)}
        )
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [
                    backend_config("p", "u", "/p", group="profile"),
                    backend_config("o", "u", "/o", group="orders", default=[]),
                    backend_config("r", "u", "/o", group="recs"),
                ],
            ),
        )
        r = await gw.get("/api/1")
        assert r.status_code == 200
        assert r.headers["x-gateway-complete"] == "false"
        assert r.json() == {"profile": {"name": "Ada"}, "orders": []}


async def test_required_failure_is_502_with_error_body(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/p": Reply(status=500), "/o": Reply(json={})})
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [backend_config("p", "u", "/p", required=True), backend_config("o", "u", "/o")],
            ),
        )
        r = await gw.get("/api/1")
        assert r.status_code == 502
        assert r.headers["x-gateway-complete"] == "false"
        body = r.json()
        assert body["error"]["code"] == "required_backend_failed"
        assert body["backends"]["p"] == "http_500"
        assert r.headers["x-gateway-backends"].startswith("p=http_500, o=")


async def test_required_timeout_is_504(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/p": Reply(delay_s=5), "/o": Reply(json={})})
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [
                    backend_config("p", "u", "/p", required=True, timeout="150ms"),
                    backend_config("o", "u", "/o"),
                ],
            ),
        )
        r = await gw.get("/api/1")
        assert r.status_code == 504
        assert r.json()["backends"] == {"p": "timeout", "o": "ok"}


async def test_all_failed_is_502_and_all_timed_out_is_504(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/bad": Reply(status=500), "/slow": Reply(delay_s=5)})
        config = simple_config(
            {"u": up},
            [backend_config("a", "u", "/bad"), backend_config("b", "u", "/slow", timeout="100ms")],
        )
        config["endpoints"].append(
            {
                "path": "/slow/{id}",
                "backends": [
                    backend_config("a", "u", "/slow", timeout="100ms"),
                    backend_config("b", "u", "/slow", timeout="120ms"),
                ],
            }
        )
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "all_backends_failed"
        r = await gw.get("/slow/1")
        assert r.status_code == 504
        assert r.json()["backends"] == {"a": "timeout", "b": "timeout"}
        assert r.headers["x-gateway-complete"] == "false"


async def test_path_parameter_is_percent_encoded_into_one_segment(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            simple_config({"u": up}, [backend_config("a", "u", "/users/{id}?x=1")]),
        )
        r = await gw.get("/api/a%20b&c=d%C3%A9")
        assert r.status_code == 200
        assert seen[-1].target == "/users/a%20b%26c%3Dd%C3%A9?x=1"


async def test_unsafe_path_parameters_are_refused_before_any_upstream_call(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {})
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/users/{id}")])
        )
        for raw in ["..", ".", "%2E%2E", "a%2Fb", "%2F", "a%00b", "a%0Ab", "%C2%85", "%zz"]:
            r = await raw_request(gw.url, "/api/" + raw)
            assert r.status == 400, raw
            assert r.json()["error"]["code"] == "invalid_path_parameter"
            assert r.json()["error"]["parameter"] == "id"
            assert r.json()["error"]["in"] == "path"
        assert up.requests == []


async def test_unknown_path_is_404_and_wrong_method_is_405_as_json(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {})
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/x")])
        )
        r = await gw.get("/nothing/here")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
        r = await gw.get("//api/1")
        assert r.status_code == 404
        r = await gw.request("DELETE", "/api/1")
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, HEAD, OPTIONS"
        assert r.json()["error"]["code"] == "method_not_allowed"


async def test_options_on_a_routed_path_is_204_with_allow_and_calls_no_upstream(
    nursery: trio.Nursery,
) -> None:
    """Without CORS, OPTIONS is answered by the gateway: 204 with Allow (RFC 9110 section
    9.3.7), HEAD listed wherever GET is; an unknown path stays 404; ``OPTIONS *`` lists
    what any endpoint allows."""
    with trio.fail_after(10):
        seen, handler = recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["endpoints"].append(
            {"path": "/api/{id}", "method": "POST", "backends": [backend_config("b", "u", "/y")]}
        )
        gw = await start_gateway(nursery, config)
        r = await gw.request("OPTIONS", "/api/1")
        assert r.status_code == 204
        assert r.headers["allow"] == "GET, HEAD, POST, OPTIONS"
        assert r.content == b""
        assert (await gw.request("OPTIONS", "/nothing")).status_code == 404
        # OPTIONS * asks about the server in general: what some endpoint allows
        host, _, port = gw.url.removeprefix("http://").partition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 204") and b"allow: get, head, post, options" in head
        assert seen == []


async def test_only_listed_headers_and_query_are_forwarded(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder()

        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config("a", "u", "/x?fixed=1")],
            forward_headers=["Accept-Language"],
            forward_query=["lang"],
        )
        config["upstreams"]["u"]["headers"] = {"Authorization": "Bearer ${TOKEN}"}
        gw = await start_gateway(nursery, config, env={"TOKEN": "t0k"})
        r = await gw.get(
            "/api/1?lang=de&lang=fr&secret=1",
            headers={"Accept-Language": "de", "Cookie": "s=1", "X-Other": "1"},
        )
        assert r.status_code == 200
        req = seen[-1]
        assert req.target == "/x?fixed=1&lang=de&lang=fr"
        assert req.headers["accept-language"] == "de"
        assert req.headers["authorization"] == "Bearer t0k"
        assert "cookie" not in req.headers
        assert "x-other" not in req.headers
        assert req.headers["host"] == f"127.0.0.1:{up.port}"


async def test_upstream_cookies_are_never_replayed_to_other_requests(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(
            lambda req: Reply(json={}, headers=[("Set-Cookie", "session=alice; Path=/")])
        )

        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/x")])
        )
        await gw.get("/api/1")
        await gw.get("/api/2")
        assert all("cookie" not in req.headers for req in seen)


async def test_health_does_not_touch_upstreams(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {})
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/x")])
        )
        r = await gw.get("/__gateway/health")
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}
        assert up.requests == []


async def test_keep_alive_connections_are_reused(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/x")])
        )
        for _ in range(20):
            assert (await gw.get("/api/1")).status_code == 200
        assert up.connections_total == 1


async def test_error_bodies_keep_the_worker_alive(nursery: trio.Nursery) -> None:
    """A broken upstream is reported per backend and never takes the worker down."""
    with trio.fail_after(20):
        up = await start_upstream(
            nursery, {"/garbage": Reply(fault="garbage"), "/ok": Reply(json={"fine": 1})}
        )
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up}, [backend_config("g", "u", "/garbage"), backend_config("o", "u", "/ok")]
            ),
        )
        for _ in range(50):
            r = await gw.get("/api/1")
            assert r.status_code == 200
            assert r.headers["x-gateway-backends"] == "g=unreachable, o=ok"


async def test_content_length_with_transfer_encoding_is_refused_and_closed(
    nursery: trio.Nursery,
) -> None:
    """RFC 9112 section 6.1: a smuggling vector; h11 alone would accept it."""
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/x")])
        )
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(
                b"GET /api/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            data = b""
            while chunk := await stream.receive_some(65536):  # the server closes
                data += chunk
        assert data.startswith(b"HTTP/1.1 400")
        assert b"invalid_request" in data
        assert up.requests == []


async def test_a_gzip_bomb_from_an_upstream_is_too_large(nursery: trio.Nursery) -> None:
    """The size limit counts decompressed bytes and stops decompressing at the limit."""
    import gzip

    bomb = gzip.compress(b"[" + b"0," * 5_000_000 + b"0]")  # 10 MB of JSON in ~10 KB
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/bomb": Reply(body=bomb, headers=[("Content-Encoding", "gzip")]),
                "/ok": Reply(json={"a": 1}),
            },
        )
        config = simple_config(
            {"u": up}, [backend_config("bomb", "u", "/bomb"), backend_config("ok", "u", "/ok")]
        )
        config["upstreams"]["u"]["max_response_size"] = "1MiB"
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == "bomb=too_large, ok=ok"
        assert len(bomb) < 1024 * 1024 < 10_000_000


async def test_head_answers_headers_without_a_body(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/x")])
        )
        r = await gw.request("HEAD", "/api/1")
        assert r.status_code == 200
        assert r.content == b""
        assert r.headers["content-length"] == str(len(b'{"a":1}'))
        assert r.headers["x-gateway-backends"] == "a=ok"


async def test_the_upstream_base_path_prefixes_every_backend_path(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/v2/users/7": Reply(json={"id": 7})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/users/{id}")])
        config["upstreams"]["u"]["url"] = up.url + "/v2/"
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/7")
        assert r.json() == {"id": 7}
        assert up.requests[-1].target == "/v2/users/7"


async def test_max_connections_bounds_connections_to_an_upstream(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1}, delay_s=0.05)})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["upstreams"]["u"]["max_connections"] = 2
        gw = await start_gateway(nursery, config)
        async with trio.open_nursery() as n:
            for i in range(12):
                n.start_soon(gw.get, f"/api/{i}")
        assert up.calls("/x") == 12
        assert up.connections_total == 2
