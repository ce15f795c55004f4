"""Retries and circuit breakers against real failing upstreams."""

from __future__ import annotations

from typing import Any

import trio
from conftest import backend_config, simple_config, start_gateway, start_upstream
from upstream import RecordedRequest, Reply


def flaky(failures: int, fault: str | None = None, status: int = 503) -> tuple[list[int], Any]:
    """An upstream handler that fails ``failures`` times, then answers."""
    calls = [0]

    async def handler(req: RecordedRequest) -> Reply:
        calls[0] += 1
        if calls[0] <= failures:
            return Reply(fault=fault) if fault else Reply(status=status)
        return Reply(json={"attempt": calls[0]})

    return calls, handler


async def test_a_failed_call_is_retried_and_succeeds(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        calls, handler = flaky(2)
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["upstreams"]["u"]["retries"] = {"attempts": 2, "backoff": "10ms"}
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == "a=ok;retries=2"
        assert r.json() == {"attempt": 3}
        assert calls[0] == 3


async def test_resets_are_retried_but_not_for_post_unless_unsafe(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        calls, handler = flaky(1, fault="reset")
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x", method="POST")])
        config["upstreams"]["u"]["retries"] = {"attempts": 3, "backoff": "10ms"}
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == "a=unreachable"
        assert calls[0] == 1
        config["upstreams"]["u"]["retries"]["unsafe"] = True
        calls[0] = 0
        gw2 = await start_gateway(nursery, config)
        r = await gw2.get("/api/1")
        assert r.headers["x-gateway-backends"] == "a=ok;retries=1"


async def test_retries_never_run_past_the_deadline(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        calls, handler = flaky(100, status=503)
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")], deadline="250ms")
        config["upstreams"]["u"]["retries"] = {"attempts": 10, "backoff": "100ms"}
        gw = await start_gateway(nursery, config)
        start = trio.current_time()
        r = await gw.get("/api/1")
        elapsed = trio.current_time() - start
        assert elapsed < 0.45
        assert calls[0] < 5
        # cut by the deadline, and still reported with the retries it made
        expected = "a=timeout" + (f";retries={calls[0] - 1}" if calls[0] > 1 else "")
        assert r.headers["x-gateway-backends"] == expected


async def test_the_breaker_opens_fails_fast_then_probes_and_closes(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        calls, handler = flaky(3, status=500)
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x", default=None)])
        config["upstreams"]["u"]["circuit_breaker"] = {
            "consecutive_failures": 3,
            "open_for": "300ms",
        }
        gw = await start_gateway(nursery, config)
        outcomes = [(await gw.get("/api/1")).headers["x-gateway-backends"] for _ in range(5)]
        assert outcomes == ["a=http_500"] * 3 + ["a=circuit_open"] * 2
        assert calls[0] == 3  # the open breaker did not call the upstream
        state = (await gw.get("/__gateway/upstreams")).json()["u"]
        assert state["circuit_breaker"]["state"] == "open"
        assert state["circuit_breaker"]["rejected_total"] == 2
        await trio.sleep(0.35)
        r = await gw.get("/api/1")  # the probe: the upstream has recovered
        assert r.headers["x-gateway-backends"] == "a=ok"
        state = (await gw.get("/__gateway/upstreams")).json()["u"]
        assert state["circuit_breaker"]["state"] == "closed"
        assert state["pool"]["open_connections"] >= 1


async def test_cancellation_by_the_gateway_never_counts_against_the_breaker(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/slow": Reply(json={}, delay_s=1), "/fail": Reply(status=500)}
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("slow", "u", "/slow"),
                backend_config("main", "u", "/fail", required=True),
            ],
        )
        config["upstreams"]["u"]["circuit_breaker"] = {"consecutive_failures": 4}
        gw = await start_gateway(nursery, config)
        for _ in range(3):  # each: main fails (counted), slow is cancelled (not counted)
            r = await gw.get("/api/1")
            assert r.headers["x-gateway-backends"] == "slow=cancelled, main=http_500"
        state = (await gw.get("/__gateway/upstreams")).json()["u"]["circuit_breaker"]
        assert state["state"] == "closed"
        assert state["consecutive_failures"] == 3


async def test_a_full_bulkhead_fails_calls_fast_with_overloaded(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/slow": Reply(json={"ok": 1}, delay_s=0.3)})
        config = simple_config({"u": up}, [backend_config("a", "u", "/slow")])
        config["upstreams"]["u"]["bulkhead"] = {"max_concurrent": 2, "queue_timeout": "50ms"}
        gw = await start_gateway(nursery, config)
        outcomes: list[str] = []

        async def one() -> None:
            r = await gw.get("/api/1")
            outcomes.append(r.headers["x-gateway-backends"])

        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(one)
        assert sorted(outcomes) == ["a=ok"] * 2 + ["a=overloaded"] * 3
        assert up.calls("/slow") == 2
        state = (await gw.get("/__gateway/upstreams")).json()["u"]["bulkhead"]
        assert state == {"in_flight": 0, "waiting": 0, "max_concurrent": 2, "overloaded_total": 3}


async def test_a_slow_call_is_hedged_and_the_loser_is_cancelled(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        calls = [0]

        async def handler(req: RecordedRequest) -> Reply:
            calls[0] += 1
            # the first call is slow, the hedge answers at once
            return Reply(json={"call": calls[0]}, delay_s=2 if calls[0] == 1 else 0)

        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")], deadline="5s")
        config["upstreams"]["u"]["hedge"] = {"after": "50ms"}
        gw = await start_gateway(nursery, config)
        start = trio.current_time()
        r = await gw.get("/api/1")
        elapsed = trio.current_time() - start
        assert r.json() == {"call": 2}
        assert r.headers["x-gateway-backends"] == "a=ok;hedges=1"
        assert 0.05 <= elapsed < 0.5
        with trio.fail_after(2):
            await up.aborted_event.wait()  # the slow first call's connection was closed
        state = (await gw.get("/__gateway/upstreams")).json()["u"]
        assert state["hedges_total"] == 1


async def test_percentile_hedging_waits_for_enough_samples(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"ok": 1}, delay_s=0.01)})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["upstreams"]["u"]["hedge"] = {"after": "p95"}
        gw = await start_gateway(nursery, config)
        guard = gw.app.guards["u"]
        assert guard.hedge_delay() is None  # no samples: no hedging yet
        for _ in range(25):
            await gw.get("/api/1")
        delay = guard.hedge_delay()
        assert delay is not None and 0.005 < delay < 0.2


def hosts_config(ups: list[Any], **upstream: Any) -> dict[str, Any]:
    config = simple_config({"u": ups[0]}, [backend_config("a", "u", "/x")], deadline="3s")
    entry = config["upstreams"]["u"]
    del entry["url"]
    entry["urls"] = [up.url for up in ups]
    entry.update(upstream)
    return config


def host_of(name: str) -> Any:
    async def handler(req: RecordedRequest) -> Reply:
        return Reply(json={"host": name})

    return handler


async def test_calls_are_balanced_round_robin_over_the_hosts(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        ups = [await start_upstream(nursery, host_of(n)) for n in "abc"]
        config = hosts_config(ups)
        config["endpoints"][0]["debug"] = True
        gw = await start_gateway(nursery, config)
        answers = [(await gw.get("/api/1")).json() for _ in range(9)]
        seen = [a["host"] for a in answers]
        assert sorted(seen) == sorted("abc" * 3)
        origins = {up.url: name for up, name in zip(ups, "abc", strict=True)}
        assert all(origins[a["_gateway"]["backends"]["a"]["host"]] == a["host"] for a in answers)
        assert seen[:3] == seen[3:6] == seen[6:]  # a fixed rotation
        hosts = (await gw.get("/__gateway/upstreams")).json()["u"]["hosts"]
        assert [h["calls_total"] for h in hosts] == [3, 3, 3]


async def test_least_outstanding_avoids_the_busy_host(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):

        async def slow(req: RecordedRequest) -> Reply:
            return Reply(json={"host": "slow"}, delay_s=0.5)

        ups = [await start_upstream(nursery, slow), await start_upstream(nursery, host_of("fast"))]
        gw = await start_gateway(nursery, hosts_config(ups, balance="least_outstanding"))
        seen: list[str] = []

        async def one() -> None:
            seen.append((await gw.get("/api/1")).json()["host"])

        async with trio.open_nursery() as clients:
            clients.start_soon(one)  # takes the slow host (round-robin tie-break)
            await trio.sleep(0.1)
            for _ in range(5):
                await one()  # the slow host is busy: all go to the fast one
        assert seen.count("slow") == 1 and seen.count("fast") == 5


async def test_a_failing_host_is_ejected_and_a_retry_goes_to_another(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        down = await start_upstream(nursery, {"/x": Reply(status=503)})
        ups = [down, await start_upstream(nursery, host_of("up"))]
        config = hosts_config(
            ups,
            retries={"attempts": 1, "backoff": "1ms"},
            outlier_detection={"consecutive_failures": 2, "ejection": "30s"},
        )
        gw = await start_gateway(nursery, config)
        headers = []
        for _ in range(6):
            r = await gw.get("/api/1")
            assert r.json() == {"host": "up"}  # a retry never lands on the same host
            headers.append(r.headers["x-gateway-backends"])
        # the first two calls that met the failing host were retried; then it was ejected
        assert headers[:4].count("a=ok;retries=1") == 2
        assert headers[4:] == ["a=ok", "a=ok"]
        hosts = (await gw.get("/__gateway/upstreams")).json()["u"]["hosts"]
        assert hosts[0]["ejected"] and hosts[0]["ejections_total"] == 1
        assert 29 < hosts[0]["ejected_for_s"] <= 30
        assert not hosts[1]["ejected"]


async def test_the_last_host_is_never_ejected(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        ups = [await start_upstream(nursery, {"/x": Reply(status=503)}) for _ in range(2)]
        config = hosts_config(ups, outlier_detection={"consecutive_failures": 1})
        gw = await start_gateway(nursery, config)
        for _ in range(6):
            r = await gw.get("/api/1")
            assert r.headers["x-gateway-backends"] == "a=http_503"
        hosts = (await gw.get("/__gateway/upstreams")).json()["u"]["hosts"]
        assert [h["ejected"] for h in hosts].count(True) == 1
        assert sum(h["calls_total"] for h in hosts) == 6


async def test_a_hung_host_is_ejected_by_the_backend_timeout(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        hung = await start_upstream(nursery, {"/x": Reply(fault="hang")})
        ups = [hung, await start_upstream(nursery, host_of("up"))]
        config = hosts_config(ups, outlier_detection={"consecutive_failures": 1})
        config["endpoints"][0]["backends"][0]["timeout"] = "100ms"
        gw = await start_gateway(nursery, config)
        outcomes = [(await gw.get("/api/1")).headers["x-gateway-backends"] for _ in range(4)]
        assert outcomes == ["a=timeout", "a=ok", "a=ok", "a=ok"]


async def test_a_backend_overrides_the_upstreams_retries_and_breaker(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        calls, handler = flaky(1000, status=503)
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [
                backend_config("a", "u", "/x"),
                backend_config(
                    "b",
                    "u",
                    "/x",
                    retries=None,
                    circuit_breaker={"consecutive_failures": 1, "open_for": "30s"},
                ),
            ],
        )
        config["upstreams"]["u"]["retries"] = {"attempts": 2, "backoff": "1ms"}
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        # a: the upstream's two retries; b: none, and its own breaker opened
        assert r.headers["x-gateway-backends"] == "a=http_503;retries=2, b=http_503"
        assert calls[0] == 4
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == "a=http_503;retries=2, b=circuit_open"
        assert calls[0] == 7
        state = (await gw.get("/__gateway/upstreams")).json()["u"]
        assert state["circuit_breaker"] is None
        own = state["backends"]["GET /api/{id}#b"]
        assert own["circuit_breaker"]["state"] == "open"
        assert own["retry_budget"] == state["retry_budget"]  # shared with the upstream
