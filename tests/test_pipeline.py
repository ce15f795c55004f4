"""The pipeline of one backend call, over real sockets: the order of its layers, and the
faults that came from policies interacting in the wrong order.

Upstream handlers run in the same trio loop as the gateway, so a handler can look at the
gateway's guards (bulkhead slots, retry budget, breaker) at the moment the upstream request
arrives: that is how these tests see which layer holds what.
"""

from __future__ import annotations

import json
import logging
import ssl
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from conftest import Gateway, backend_config, simple_config, start_gateway, start_upstream
from upstream import RecordedRequest, Reply, Upstream, serve_upstream

from gateway._call.exchange import ByteBudget
from gateway._rules.resilience import UpstreamGuard


def guard(gw: Gateway, name: str = "u") -> UpstreamGuard:
    return gw.app.guards[name]


def slots_taken(gw: Gateway, name: str = "u") -> int:
    limiter = guard(gw, name).limiter
    assert limiter is not None
    return int(limiter.statistics().borrowed_tokens)


class Gate:
    """Holds upstream requests until released; tells how many are waiting."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.waiting = 0
        self.changed = trio.Event()

    async def wait(self) -> None:
        self.waiting += 1
        self.changed.set()
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1

    async def until_waiting(self, n: int) -> None:
        while self.waiting < n:
            self.changed = trio.Event()
            await self.changed.wait()


# -- the order of the layers --------------------------------------------------------------


async def test_one_call_walks_the_layers_in_order(nursery: trio.Nursery) -> None:
    """cache -> coalescing -> retries -> breaker -> hedging -> bulkhead -> host -> exchange:

    - each attempt is judged by the breaker (the first failure is recorded before the
      retry is sent) and takes a bulkhead slot of its own: the slot is free while the
      retry waits out its backoff, so another request can use it;
    - a retry counts against the retry budget while it is in flight;
    - a cache hit answers before anything else: no bulkhead slot, no breaker verdict, no
      upstream call.
    """
    seen: list[dict[str, Any]] = []
    first_failed = trio.Event()
    gw: Gateway | None = None

    async def handler(req: RecordedRequest) -> Reply:
        assert gw is not None
        g = guard(gw)
        assert g.breaker is not None
        seen.append(
            {
                "path": req.path,
                "slots": slots_taken(gw),
                "breaker_calls": g.breaker.statistics(trio.current_time()).window_requests,
                "retries_in_flight": g.budget.statistics().retries_in_flight,
            }
        )
        if req.path == "/flaky" and not first_failed.is_set():
            first_failed.set()
            return Reply(status=503)
        return Reply(json={"path": req.path}, headers=[("Cache-Control", "max-age=60")])

    with trio.fail_after(10):
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up}, [backend_config("b", "u", "/{id}", cache={"ttl": "60s"})], path="/x/{id}"
        )
        config["upstreams"]["u"].update(
            bulkhead={"max_concurrent": 1, "queue_timeout": "20ms"},
            circuit_breaker={"consecutive_failures": 5, "min_requests": 100},
            retries={"attempts": 2, "backoff": "300ms", "on": ["http_503"]},
        )
        gw = await start_gateway(nursery, config)
        g = guard(gw)
        assert g.breaker is not None
        responses: list[Any] = []

        async def get(path: str) -> None:
            responses.append(await gw.get(path))  # type: ignore[union-attr]

        async with trio.open_nursery() as inner:
            inner.start_soon(get, "/x/flaky")
            await first_failed.wait()
            await trio.testing.wait_all_tasks_blocked(0.01)  # the retry's backoff
            assert slots_taken(gw) == 0
            assert g.breaker.statistics(trio.current_time()).window_requests == 1
            other = await gw.get("/x/other")  # the one slot is free meanwhile
            assert other.headers["x-gateway-backends"] == "b=ok"
        (r,) = responses
        assert r.headers["x-gateway-backends"] == "b=ok;retries=1"
        first, during_backoff, retry = seen
        assert first == {"path": "/flaky", "slots": 1, "breaker_calls": 0, "retries_in_flight": 0}
        assert during_backoff["path"] == "/other"
        assert retry == {"path": "/flaky", "slots": 1, "breaker_calls": 2, "retries_in_flight": 1}
        assert g.breaker.statistics(trio.current_time()).window_requests == 3
        assert slots_taken(gw) == 0

        # a hit: no upstream call, no slot, no breaker verdict
        hit = await gw.get("/x/flaky")
        assert hit.headers["x-gateway-backends"] == "b=ok;cache=hit"
        assert len(seen) == 3
        assert g.breaker.statistics(trio.current_time()).window_requests == 3


async def test_each_hedge_takes_its_own_slot_and_counts_against_the_retry_budget(
    nursery: trio.Nursery,
) -> None:
    gate = Gate()
    seen: list[tuple[int, int]] = []
    gw: Gateway | None = None

    async def handler(req: RecordedRequest) -> Reply:
        assert gw is not None
        seen.append((slots_taken(gw), guard(gw).budget.statistics().retries_in_flight))
        await gate.wait()
        return Reply(json={"ok": True})

    with trio.fail_after(10):
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("b", "u", "/h")])
        config["upstreams"]["u"].update(
            bulkhead={"max_concurrent": 4, "queue_timeout": "1s"},
            hedge={"after": "20ms", "max": 1},
        )
        gw = await start_gateway(nursery, config)
        async with trio.open_nursery() as inner:
            inner.start_soon(gw.get, "/api/1")
            await gate.until_waiting(2)  # the call and its hedge, both at the upstream
            assert seen == [(1, 0), (2, 1)]
            assert guard(gw).hedges_total == 1
            gate.open.set()
        assert slots_taken(gw) == 0
        assert guard(gw).budget.statistics().retries_in_flight == 0


async def test_each_for_each_call_takes_its_own_bulkhead_slot(nursery: trio.Nursery) -> None:
    """``max_concurrent`` bounds the upstream requests in flight, ``for_each`` ones too."""
    in_flight = 0
    most = 0

    async def handler(req: RecordedRequest) -> Reply:
        nonlocal in_flight, most
        if req.path == "/list":
            return Reply(json=[{"id": i} for i in range(6)])
        in_flight += 1
        most = max(most, in_flight)
        try:
            await trio.sleep(0.02)  # the upstream's latency, so that calls overlap
        finally:
            in_flight -= 1
        return Reply(json={"id": req.path})

    with trio.fail_after(10):
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [
                backend_config("list", "u", "/list"),
                backend_config("items", "u", "/item/{list[*].id}", for_each=True),
            ],
        )
        config["upstreams"]["u"]["bulkhead"] = {"max_concurrent": 2, "queue_timeout": "5s"}
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == "list=ok, items=ok"
        assert len(r.json()["items"]) == 6
        assert most == 2


async def test_a_cache_hit_is_answered_while_the_bulkhead_is_full(
    nursery: trio.Nursery,
) -> None:
    gate = Gate()

    async def handler(req: RecordedRequest) -> Reply:
        if req.path == "/slow":
            await gate.wait()
        return Reply(json={"id": req.path})

    with trio.fail_after(10):
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up}, [backend_config("s", "u", "/{id}", cache={"ttl": "60s"})], path="/item/{id}"
        )
        config["upstreams"]["u"]["bulkhead"] = {"max_concurrent": 1, "queue_timeout": "20ms"}
        gw = await start_gateway(nursery, config)
        assert (await gw.get("/item/a")).headers["x-gateway-backends"] == "s=ok"
        async with trio.open_nursery() as inner:
            inner.start_soon(gw.get, "/item/slow")
            await gate.until_waiting(1)
            assert slots_taken(gw) == 1
            hit = await gw.get("/item/a")
            assert hit.headers["x-gateway-backends"] == "s=ok;cache=hit"
            assert hit.json() == {"id": "/a"}
            # a miss needs the slot: refused
            miss = await gw.get("/item/b")
            assert miss.headers["x-gateway-backends"] == "s=overloaded"
            gate.open.set()


# -- coalescing never shares what may not be shared ----------------------------------------

UNSHAREABLE = [
    pytest.param([("Set-Cookie", "session={n}")], 200, id="set-cookie"),
    pytest.param([("Cache-Control", "private, max-age=60")], 200, id="private"),
    pytest.param([("Cache-Control", "no-store")], 200, id="no-store"),
    pytest.param([("Cache-Control", "no-cache")], 200, id="no-cache"),
    pytest.param([("Vary", "*")], 200, id="vary-star"),
    pytest.param([("Cache-Control", 'max-age=60, no-store="')], 200, id="malformed-is-not-trusted"),
    # a status no cache stores still reaches its client with its headers
    pytest.param([("Set-Cookie", "session={n}")], 206, id="set-cookie-on-206"),
    pytest.param([("Cache-Control", "private")], 404, id="private-on-404"),
]


async def _three_at_once(
    nursery: trio.Nursery, headers: list[tuple[str, str]], status: int = 200
) -> tuple[Upstream, list[Any]]:
    """Three identical concurrent requests to a coalescing cached backend whose upstream
    answers each call with its own number (in the body and in ``headers``)."""
    gate = Gate()
    count = 0

    async def handler(req: RecordedRequest) -> Reply:
        nonlocal count
        count += 1
        n = count
        if n == 1:
            await gate.wait()  # the leader's call, until the followers are waiting
        return Reply(status, json={"n": n}, headers=[(k, v.format(n=n)) for k, v in headers])

    up = await start_upstream(nursery, handler)
    config = simple_config(
        {"u": up},
        [backend_config("b", "u", "/me", cache={"ttl": "60s"}, return_headers=["Set-Cookie"])],
    )
    gw = await start_gateway(nursery, config)
    assert gw.app.state is not None
    flights = gw.app.state.flights
    responses: list[Any] = []

    async def one() -> None:
        responses.append(await gw.get("/api/1"))

    async with trio.open_nursery() as inner:
        for _ in range(3):
            inner.start_soon(one)
        await gate.until_waiting(1)
        while flights.statistics().waiting < 2:  # followers join within a few loop turns
            await trio.testing.wait_all_tasks_blocked(0.001)
        gate.open.set()
    return up, responses


@pytest.mark.parametrize(("headers", "status"), UNSHAREABLE)
async def test_a_follower_never_gets_a_reply_that_may_not_be_shared(
    nursery: trio.Nursery, headers: list[tuple[str, str]], status: int
) -> None:
    with trio.fail_after(10):
        up, responses = await _three_at_once(nursery, headers, status)
    assert up.calls("/me") == 3  # each follower made its own call
    assert not any("coalesced" in r.headers["x-gateway-backends"] for r in responses)
    if status < 300:
        assert sorted(r.json()["n"] for r in responses) == [1, 2, 3]
    cookies = [r.headers.get("set-cookie") for r in responses]
    if any(cookies):
        assert sorted(cookies) == ["session=1", "session=2", "session=3"]


async def test_a_shareable_reply_is_coalesced(nursery: trio.Nursery) -> None:
    """The control for the test above: the same three requests share one call."""
    with trio.fail_after(10):
        up, responses = await _three_at_once(nursery, [("Cache-Control", "max-age=60")])
    assert up.calls("/me") == 1
    assert [r.json()["n"] for r in responses] == [1, 1, 1]
    assert sorted(r.headers["x-gateway-backends"] for r in responses) == [
        "b=ok",
        "b=ok;cache=coalesced",
        "b=ok;cache=coalesced",
    ]


# -- passthrough runs the upstream's policies ---------------------------------------------


async def test_passthrough_is_balanced_over_every_host(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        a = await start_upstream(nursery, {"/p": Reply(json={"host": "a"})})
        b = await start_upstream(nursery, {"/p": Reply(json={"host": "b"})})
        config = simple_config({}, [backend_config("p", "u", "/p")], path="/pass", passthrough=True)
        config["upstreams"]["u"] = {"urls": [a.url, b.url]}
        gw = await start_gateway(nursery, config)
        hosts = [(await gw.get("/pass")).json()["host"] for _ in range(4)]
        assert sorted(hosts) == ["a", "a", "b", "b"]
        # each host got its own Host field
        assert {r.headers["host"] for r in a.requests} == {f"127.0.0.1:{a.port}"}
        assert {r.headers["host"] for r in b.requests} == {f"127.0.0.1:{b.port}"}


async def test_passthrough_failures_open_the_breaker(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/p": Reply(status=500, json={"e": 1})})
        config = simple_config({"u": up}, [backend_config("p", "u", "/p")], path="/pass")
        config["endpoints"][0]["passthrough"] = True
        config["upstreams"]["u"]["circuit_breaker"] = {
            "consecutive_failures": 2,
            "open_for": "60s",
        }
        gw = await start_gateway(nursery, config)
        assert (await gw.get("/pass")).status_code == 500
        assert (await gw.get("/pass")).status_code == 500
        refused = await gw.get("/pass")
        assert refused.status_code == 502
        assert refused.headers["x-gateway-backends"] == "p=circuit_open"
        assert refused.headers["cache-control"] == "no-store"
        assert up.calls("/p") == 2


async def test_passthrough_holds_a_bulkhead_slot_until_its_body_is_streamed(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/slow": Reply(body=b"x" * 64, chunks=4, chunk_size=16, chunk_delay_s=0.1),
                "/fast": Reply(json={"fast": True}),
            },
        )
        config = simple_config({"u": up}, [backend_config("p", "u", "/{id}")], path="/pass/{id}")
        config["endpoints"][0]["passthrough"] = True
        config["upstreams"]["u"]["bulkhead"] = {"max_concurrent": 1, "queue_timeout": "20ms"}
        gw = await start_gateway(nursery, config)
        async with gw.client.stream("GET", gw.url + "/pass/slow") as streaming:
            assert streaming.status_code == 200
            assert slots_taken(gw) == 1  # head received, body still streaming
            busy = await gw.get("/pass/fast")
            assert busy.status_code == 502
            assert busy.headers["x-gateway-backends"] == "p=overloaded"
            assert await streaming.aread() == b"x" * 64
        while slots_taken(gw):  # released as the server finishes the response
            await trio.testing.wait_all_tasks_blocked(0.001)
        assert (await gw.get("/pass/fast")).json() == {"fast": True}


# -- Host and TLS server name per host ----------------------------------------------------


async def test_every_host_gets_its_own_host_field(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        a = await start_upstream(nursery, {"/x": Reply(json={"h": "a"})})
        b = await start_upstream(nursery, {"/x": Reply(json={"h": "b"})})
        config = simple_config({}, [backend_config("x", "u", "/x")])
        config["upstreams"]["u"] = {"urls": [a.url, b.url]}
        gw = await start_gateway(nursery, config)
        for _ in range(4):
            assert (await gw.get("/api/1")).status_code == 200
        assert a.requests and b.requests
        assert {r.headers["host"] for r in a.requests} == {f"127.0.0.1:{a.port}"}
        assert {r.headers["host"] for r in b.requests} == {f"127.0.0.1:{b.port}"}


async def test_host_header_names_one_virtual_host_for_every_replica(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``host_header``: the Host field and the TLS server name (the certificate is issued
    for the virtual name only, so a handshake naming 127.0.0.1 would fail)."""
    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.internal").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with trio.fail_after(10):
        a = await nursery.start(
            partial(serve_upstream, {"/x": Reply(json={})}, ssl_context=server_ctx)
        )
        b = await nursery.start(
            partial(serve_upstream, {"/x": Reply(json={})}, ssl_context=server_ctx)
        )
        config = simple_config({}, [backend_config("x", "u", "/x")])
        config["upstreams"]["u"] = {
            "urls": [a.url, b.url],
            "host_header": "api.internal:8443",
            "ca_file": str(ca_file),
        }
        gw = await start_gateway(nursery, config)
        for _ in range(4):
            r = await gw.get("/api/1")
            assert r.headers["x-gateway-backends"] == "x=ok"
        assert a.requests and b.requests
        assert {r.headers["host"] for r in [*a.requests, *b.requests]} == {"api.internal:8443"}


# -- return_headers never copies connection-specific fields -------------------------------


@pytest.mark.parametrize("named", ["X-Hop", "x-hop, X-Other", "X-OTHER,x-hop"])
async def test_return_headers_never_copies_a_field_named_by_connection(
    nursery: trio.Nursery, named: str
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/x": Reply(
                    json={},
                    headers=[
                        ("Connection", named),
                        ("X-Hop", "for this connection only"),
                        ("X-Other", "also"),
                        ("X-Kept", "end to end"),
                    ],
                )
            },
        )
        config = simple_config(
            {"u": up},
            [backend_config("x", "u", "/x", return_headers=["X-Hop", "X-Other", "X-Kept"])],
        )
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-kept"] == "end to end"
        assert "x-hop" not in r.headers
        if "other" in named.lower():
            assert "x-other" not in r.headers
        else:
            assert r.headers["x-other"] == "also"


# -- why a backend failed -----------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_failure_reason_is_in_the_access_log_and_debug_output(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/err": Reply(status=500),
                "/ok": Reply(json={}),
                "/two": Reply(json=[1, 2]),
                "/token": Reply(json={"token": "Bearer s3cr3t/../value"}),
            },
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("err", "u", "/err"),
                backend_config("h", "u", "/ok/{profile.token}", group="h", required=False),
                backend_config("profile", "u", "/token", group="profile"),
                backend_config("many", "u", "/two", group="many"),
                backend_config("each", "u", "/ok/{many[*]}", for_each=True, max_calls=1),
            ],
            debug=True,
        )
        gw = await start_gateway(nursery, config)
        lines = Lines()
        access_log = logging.getLogger("gateway.access")
        access_log.addHandler(lines)
        level = access_log.level
        access_log.setLevel(logging.INFO)
        try:
            r = await gw.get("/api/1", headers={"X-Token": "Bearer s3cr3t/../value"})
            while not lines.records:  # written once the response is sent
                await trio.testing.wait_all_tasks_blocked(0.001)
        finally:
            access_log.removeHandler(lines)
            access_log.setLevel(level)
    debug = r.json()["_gateway"]["backends"]
    reasons = {name: b.get("reason") for name, b in debug.items()}
    assert reasons["err"] == "upstream answered 500"
    assert reasons["h"] is not None and "profile.token" in reasons["h"]
    assert reasons["many"] is None  # succeeded: no reason
    assert reasons["each"] is not None and "max_calls 1" in reasons["each"]
    access = [rec.access for rec in lines.records if hasattr(rec, "access")]
    assert access, "no access line"
    logged = access[-1]["backends"]
    assert {name: b.get("reason") for name, b in logged.items()} == reasons
    # never a value itself (a client's is refused with a 400 that names it, see
    # test_client_values.py; an upstream's may be a secret too)
    assert "s3cr3t" not in str(debug) and "s3cr3t" not in str(logged)


# -- composition (pure) -------------------------------------------------------------------


def _stack_of(config: dict[str, Any], passthrough: bool = False) -> list[str]:
    from gateway import load_config
    from gateway._app import build_guards
    from gateway._call.pipeline import (
        AGGREGATED,
        PASSTHROUGH,
        CallSpec,
        CallStats,
        Exchange,
        compose,
    )
    from gateway._state.shared import SharedState

    plan = load_config("t.yaml", {}, text=json.dumps(config))
    backend = plan.endpoints[0].backends[0]
    guards = build_guards(plan, {})
    spec = CallSpec(
        backend,
        guards.get(backend.guard_name),
        SharedState(store=None),  # type: ignore[arg-type]
        CallStats(trio.CancelScope()),
        sender=lambda *args: None,  # type: ignore[arg-type,return-value]
        budget=None,
    )
    if not passthrough:
        spec = spec._replace(budget=ByteBudget(1))
    layer: Any = compose(
        spec,
        PASSTHROUGH if passthrough else AGGREGATED,
        Exchange(spec) if not passthrough else Terminal(),
    )
    names = []
    while layer is not None:
        names.append(type(layer).__name__)
        layer = getattr(layer, "next", None)
    return names


class Terminal:
    async def send(self, request: Any) -> Any:
        raise AssertionError("not called")


EVERY_POLICY = {
    "version": 1,
    "upstreams": {
        "u": {
            "urls": ["http://127.0.0.1:1", "http://127.0.0.1:2"],
            "retries": {"attempts": 1},
            "circuit_breaker": {"consecutive_failures": 3},
            "hedge": {"after": "10ms"},
            "bulkhead": {"max_concurrent": 5},
        }
    },
    "endpoints": [
        {
            "path": "/x",
            "backends": [{"name": "b", "upstream": "u", "path": "/b", "cache": {"ttl": "1s"}}],
        }
    ],
}


def test_the_stack_is_composed_in_the_documented_order() -> None:
    assert _stack_of(EVERY_POLICY) == [
        "Cache",
        "Coalescing",
        "Retries",
        "Breaker",
        "Hedging",
        "Bulkhead",
        "HostChoice",
        "Exchange",
    ]
    assert _stack_of(EVERY_POLICY, passthrough=True) == [
        "Breaker",
        "Bulkhead",
        "HostChoice",
        "Terminal",
    ]


def test_a_backend_without_policies_is_just_its_exchange() -> None:
    config = json.loads(json.dumps(EVERY_POLICY))
    config["upstreams"]["u"] = {"url": "http://127.0.0.1:1"}
    del config["endpoints"][0]["backends"][0]["cache"]
    assert _stack_of(config) == ["Exchange"]
