"""Rate limits, caches and coalescing through a running gateway: in memory, and on a real
redis-server shared by two gateway processes (killed and restarted under load)."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import trio
from conftest import (
    backend_config,
    config_text,
    recorder,
    simple_config,
    start_gateway,
    start_gateway_process,
    start_upstream,
)
from redis_server import RedisServer
from upstream import RecordedRequest, Reply


def limited(up: Any, *limits: dict[str, Any], **state: Any) -> dict[str, Any]:
    config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
    config["endpoints"][0]["rate_limit"] = list(limits)
    if state:
        config["state"] = state
    return config


# --- rate limits ----------------------------------------------------------------------------


async def test_over_the_limit_is_429_with_retry_after_and_ratelimit_fields(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"n": 1})})
        gw = await start_gateway(nursery, limited(up, {"rate": "3/min", "key": "ip"}))
        answers = [await gw.get("/api/1") for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert answers[0].headers["ratelimit-policy"] == '"ip";q=3;w=60'
        assert answers[0].headers["ratelimit"] == '"ip";r=2;t=20'
        assert answers[2].headers["ratelimit"].startswith('"ip";r=0;')
        refused = answers[3]
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.headers["content-type"] == "application/json"
        assert 19 <= int(refused.headers["retry-after"]) <= 20
        assert refused.headers["ratelimit"].startswith('"ip";r=0;')
        assert "x-request-id" in refused.headers


async def test_keys_count_apart_and_several_limits_apply(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        config = limited(
            up,
            {"rate": "2/min", "key": "header:X-Api-Key", "name": "per-key"},
            {"rate": "5/min", "key": "global"},
        )
        gw = await start_gateway(nursery, config)

        async def status(key: str) -> int:
            return (await gw.get("/api/1", headers={"x-api-key": key})).status_code

        assert [await status("a") for _ in range(3)] == [200, 200, 429]
        assert [await status("b") for _ in range(2)] == [200, 200]
        # the global limit (5) is spent by a, a, b, b and this one; a's refusal did not count
        assert await status("c") == 200
        r = await gw.get("/api/1", headers={"x-api-key": "d"})
        assert r.status_code == 429
        assert r.headers["ratelimit-policy"] == '"per-key";q=2;w=60, "global";q=5;w=60'


async def test_a_limit_is_exact_under_concurrency(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        gw = await start_gateway(nursery, limited(up, {"rate": "25/h", "key": "global"}))
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await gw.get("/api/1")).status_code)

        async with trio.open_nursery() as clients:
            for _ in range(60):
                clients.start_soon(one)
        assert statuses.count(200) == 25 and statuses.count(429) == 35


async def test_passthrough_endpoints_are_limited_too(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        config = limited(up, {"rate": "1/min", "key": "ip"})
        config["endpoints"][0]["passthrough"] = True
        gw = await start_gateway(nursery, config)
        assert (await gw.get("/api/1")).status_code == 200
        assert (await gw.get("/api/1")).status_code == 429


# --- the backend cache and coalescing --------------------------------------------------------


def cached_config(up: Any, cache: dict[str, Any], path: str = "/x") -> dict[str, Any]:
    return simple_config({"u": up}, [backend_config("a", "u", path, cache=cache)])


async def test_backend_responses_are_cached_as_cache_control_allows(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        replies = {
            "/fresh": Reply(json={"v": 1}, headers=[("cache-control", "max-age=60")]),
            "/nostore": Reply(json={"v": 2}, headers=[("cache-control", "no-store, max-age=60")]),
            "/private": Reply(json={"v": 3}, headers=[("cache-control", "private, max-age=60")]),
            "/silent": Reply(json={"v": 4}),
        }
        seen, handler = recorder(lambda req: replies[req.path])
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config(name, "u", "/" + name, cache={}) for name in ("fresh", "nostore")]
            + [
                backend_config("private", "u", "/private", cache={"ttl": "60s"}),
                backend_config("silent", "u", "/silent", cache={"ttl": "60s"}),
            ],
        )
        gw = await start_gateway(nursery, config)
        first = await gw.get("/api/1")
        assert first.headers["x-gateway-backends"] == (
            "fresh=ok, nostore=ok, private=ok, silent=ok"
        )
        second = await gw.get("/api/1")
        assert second.json() == first.json() == {"v": 4}  # later backends' keys win the merge
        assert second.headers["x-gateway-backends"] == (
            "fresh=ok;cache=hit, nostore=ok, private=ok, silent=ok;cache=hit"
        )
        assert sorted(r.path for r in seen) == sorted(
            ["/fresh", "/nostore", "/private", "/silent", "/nostore", "/private"]
        )


async def test_a_cache_entry_expires_and_keys_cover_url_and_forwarded_headers(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(
            lambda req: Reply(json={"q": req.path}, headers=[("cache-control", "max-age=1")])
        )
        up = await start_upstream(nursery, handler)
        config = cached_config(up, {}, path="/x/{id}")
        config["endpoints"][0]["forward_headers"] = ["Accept-Language"]
        gw = await start_gateway(nursery, config)
        await gw.get("/api/1")
        await gw.get("/api/1")
        await gw.get("/api/2")  # another URL
        await gw.get("/api/1", headers={"accept-language": "fr"})  # another forwarded value
        assert len(seen) == 3
        await trio.sleep(1.1)
        await gw.get("/api/1")
        assert len(seen) == 4


async def test_100_concurrent_identical_calls_make_one_upstream_call(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        seen, handler = recorder(lambda req: Reply(json={"v": 1}, delay_s=0.3))
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, cached_config(up, {"ttl": "1ms"}))
        answers: list[httpx.Response] = []

        async def one() -> None:
            answers.append(await gw.get("/api/1"))

        async with trio.open_nursery() as clients:
            for _ in range(100):
                clients.start_soon(one)
        assert len(seen) == 1
        assert all(r.status_code == 200 and r.json() == {"v": 1} for r in answers)
        shared = [r.headers["x-gateway-backends"] for r in answers].count("a=ok;cache=coalesced")
        assert shared == 99
        state = (await gw.get("/__gateway/state")).json()
        assert state["coalescer"]["in_flight"] == 0


async def test_a_follower_takes_over_when_the_leaders_client_leaves(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(lambda req: Reply(json={"n": len(seen)}, delay_s=0.4))
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(nursery, cached_config(up, {}))
        follower: list[httpx.Response] = []

        async def leader() -> None:
            with trio.move_on_after(0.1):  # the leader's client gives up
                await gw.get("/api/1")

        async def follow() -> None:
            await trio.sleep(0.05)
            follower.append(await gw.get("/api/1"))

        async with trio.open_nursery() as clients:
            clients.start_soon(leader)
            clients.start_soon(follow)
        (answer,) = follower
        assert answer.status_code == 200 and answer.json() == {"n": 2}
        assert answer.headers["x-gateway-backends"] == "a=ok"  # it made the call itself
        assert len(seen) == 2
        with trio.fail_after(2):
            await up.aborted_event.wait()  # the leader's upstream call was cut
        stats = (await gw.get("/__gateway/state")).json()["coalescer"]
        assert stats["takeovers_total"] == 1


# --- the aggregate cache ---------------------------------------------------------------------


async def test_complete_200_responses_are_cached_by_key(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        fail = [False]

        def reply(req: RecordedRequest) -> Reply:
            return Reply(status=503) if fail[0] else Reply(json={"path": req.path})

        seen, handler = recorder(reply)
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x/{id}")])
        config["endpoints"][0]["cache"] = {"ttl": "30s", "key": ["path.id", "query.lang"]}
        gw = await start_gateway(nursery, config)
        first = await gw.get("/api/1?lang=en&other=1")
        assert first.headers["x-cache"] == "miss"
        again = await gw.get("/api/1?other=2&lang=en")  # other query keys are not in the key
        assert again.headers["x-cache"] == "hit"
        assert again.content == first.content
        assert again.headers["x-gateway-backends"] == "a=ok"
        assert "x-request-id" in again.headers
        assert len(seen) == 1
        fail[0] = True
        incomplete = await gw.get("/api/1?lang=fr")
        assert incomplete.status_code == 502 and incomplete.headers["x-cache"] == "miss"
        assert (await gw.get("/api/1?lang=fr")).headers["x-cache"] == "miss"  # not stored
        assert len(seen) == 3


async def test_the_memory_store_stays_bounded_under_a_flood_of_keys(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(30):
        up = await start_upstream(nursery, {"/x": Reply(json={"pad": "x" * 1000})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["endpoints"][0]["cache"] = {"ttl": "60s"}
        config["endpoints"][0]["rate_limit"] = {"rate": "100000/s", "key": "query:k"}
        config["state"] = {"memory_max_size": "64KiB"}
        gw = await start_gateway(nursery, config)
        for i in range(500):
            r = await gw.get(f"/api/1?k={i}")
            assert r.status_code == 200
        store = (await gw.get("/__gateway/state")).json()["store"]
        assert store["kind"] == "memory"
        assert 0 < store["used_bytes"] <= 64 * 1024
        assert store["evicted_total"] > 400
        # and the newest entry is still served from the cache
        assert (await gw.get("/api/1?k=499")).headers["x-cache"] == "hit"


# --- on Redis, shared by two gateway processes -----------------------------------------------


def write_config(tmp_path: Any, config: dict[str, Any]) -> str:
    path = os.path.join(str(tmp_path), "gw.yaml")
    with open(path, "w") as f:
        f.write(config_text(config))
    return path


async def test_two_instances_share_limits_and_caches_on_redis(
    nursery: trio.Nursery, redis: RedisServer, tmp_path: Any
) -> None:
    with trio.fail_after(30):
        seen, handler = recorder(lambda req: Reply(json={"v": req.path}))
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up}, [backend_config("a", "u", "/x", cache={"ttl": "30s"})], path="/api/{id}"
        )
        config["endpoints"].append(
            {
                "path": "/limited",
                "rate_limit": {"rate": "20/h", "key": "global"},
                "backends": [backend_config("b", "u", "/y")],
            }
        )
        config["state"] = {"redis": redis.url, "timeout": "500ms"}
        file = write_config(tmp_path, config)
        (one, p1), (two, p2) = [await start_gateway_process(nursery, file) for _ in range(2)]
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            # a cache filled through one instance is served by the other (behind a load
            # balancer both see the same Host, which is part of the key)
            same_host = {"host": "api.example"}
            r1 = await client.get(one + "/api/1", headers=same_host)
            r2 = await client.get(two + "/api/1", headers=same_host)
            assert r1.headers["x-gateway-backends"] == "a=ok"
            assert r2.headers["x-gateway-backends"] == "a=ok;cache=hit"
            assert [r.path for r in seen] == ["/x"]
            # a limit is exact across both instances, asked concurrently
            statuses: list[int] = []

            async def ask(url: str) -> None:
                statuses.append((await client.get(url + "/limited")).status_code)

            async with trio.open_nursery() as clients:
                for i in range(50):
                    clients.start_soon(ask, (one, two)[i % 2])
            assert statuses.count(200) == 20 and statuses.count(429) == 30
            state = (await client.get(two + "/__gateway/state")).json()["store"]
            assert state["kind"] == "redis" and not state["failing"]
        for proc in (p1, p2):
            proc.terminate()


async def test_redis_killed_and_restarted_under_load(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    with trio.fail_after(30):
        up = await start_upstream(nursery, {"/x": Reply(json={"ok": 1})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x", cache={"ttl": "30s"})])
        config["endpoints"][0]["rate_limit"] = {"rate": "100000/s", "key": "ip"}
        config["state"] = {"redis": redis.url, "timeout": "100ms"}
        gw = await start_gateway(nursery, config)
        statuses: list[int] = []
        stop = trio.Event()

        async def load() -> None:
            while not stop.is_set():
                r = await gw.get("/api/1")
                statuses.append(r.status_code)
                if r.status_code != 200:
                    raise AssertionError(f"{r.status_code}: {r.text}")

        async with trio.open_nursery() as clients:
            for _ in range(4):
                clients.start_soon(load)
            await trio.sleep(0.3)
            assert (await gw.get("/api/1")).headers["ratelimit-policy"] == '"ip";q=100000;w=1'
            await redis.kill()
            await trio.sleep(0.5)
            down = (await gw.get("/api/1")).headers
            assert "ratelimit" not in down  # failed open: no decision to report
            state = (await gw.get("/__gateway/state")).json()["store"]
            assert state["failing"]
            await redis.start()
            await trio.sleep(0.5)
            stop.set()
        assert set(statuses) == {200} and len(statuses) > 50
        recovered = await gw.get("/api/1")
        assert recovered.headers["ratelimit-policy"] == '"ip";q=100000;w=1'
        assert not (await gw.get("/__gateway/state")).json()["store"]["failing"]
        metrics = (await gw.get("/__gateway/metrics")).text
        assert 'gateway_state_errors_total{operation="rate"}' in metrics


async def test_fail_closed_answers_503_while_redis_is_down(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    with trio.fail_after(20):
        up = await start_upstream(nursery, {"/x": Reply(json={})})
        config = limited(
            up, {"rate": "10/s", "key": "ip"}, redis=redis.url, on_error="closed", timeout="100ms"
        )
        gw = await start_gateway(nursery, config)
        assert (await gw.get("/api/1")).status_code == 200
        await redis.kill()
        start = trio.current_time()
        r = await gw.get("/api/1")
        assert trio.current_time() - start < 1
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "rate_limit_unavailable"
        await redis.start()
        # recovers by itself: the next call opens a new connection
        assert (await gw.get("/api/1")).status_code == 200


def test_the_redis_url_is_masked_in_the_config_view() -> None:
    from gateway import load_config
    from gateway._app import masked_config

    config = {"version": 1, "state": {"redis": "redis://user:s3cret@127.0.0.1:6379/0"}}
    plan = load_config("gw.yaml", {}, text=json.dumps(config))
    assert masked_config(plan)["state"]["redis"] == "redis://user:***@127.0.0.1:6379/0"


async def test_the_default_aggregate_key_covers_query_and_forwarded_headers(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(lambda req: Reply(json={"n": 1}))
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["endpoints"][0]["cache"] = {"ttl": "30s"}
        config["endpoints"][0]["forward_headers"] = ["Accept-Language"]
        gw = await start_gateway(nursery, config)
        asks = [
            ("/api/1", {}),
            ("/api/1", {}),  # hit
            ("/api/2", {}),
            ("/api/1?q=1", {}),
            ("/api/1", {"accept-language": "de"}),
            ("/api/1", {"accept-language": "de"}),  # hit
            ("/api/1", {"x-other": "not forwarded"}),  # hit
        ]
        caches = [(await gw.get(path, headers=h)).headers["x-cache"] for path, h in asks]
        assert caches == ["miss", "hit", "miss", "miss", "miss", "hit", "hit"]
        assert len(seen) == 4


async def test_octets_that_are_not_utf8_key_limits_and_caches_on_redis(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    """Path and query values keep the client's octets, UTF-8 or not: as rate-limit and cache
    keys on Redis they count and hit like any other value (never a 500)."""
    with trio.fail_after(20):
        seen, handler = recorder(lambda req: Reply(json={"t": req.target}))
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x/{id}")])
        config["endpoints"][0]["rate_limit"] = [
            {"name": "by_q", "rate": "2/min", "key": "query:q"},
            {"name": "by_id", "rate": "3/min", "key": "path:id"},
        ]
        config["endpoints"][0]["cache"] = {"ttl": "30s", "key": ["path.id", "query.q"]}
        config["state"] = {"redis": redis.url, "timeout": "2s", "on_error": "closed"}
        gw = await start_gateway(nursery, config)
        first = await gw.get("/api/%FF?q=%FE")
        assert first.status_code == 200, first.text
        assert first.json() == {"t": "/x/%FF"}
        again = await gw.get("/api/%FF?q=%FE")
        assert again.status_code == 200 and again.headers["x-cache"] == "hit"
        assert (await gw.get("/api/%FF?q=%FE")).status_code == 429  # over by_q
        assert (await gw.get("/api/%FF?q=%FD")).status_code == 200  # another q
        assert (await gw.get("/api/%FF?q=%FC")).status_code == 429  # over by_id
        assert len(seen) == 2
