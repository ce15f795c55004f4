"""Admin routes private by default: who may read them, and on which listener.

The peer address is the TCP connection's: tests that need a peer other than 127.0.0.1
connect from 127.0.0.2 (loopback on Linux covers 127.0.0.0/8) or allow a range that
excludes the test client.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import werkzeug.exceptions
from conftest import Gateway, simple_config, start_gateway, start_upstream
from hypothesis import given
from hypothesis import strategies as st
from upstream import Reply

from gateway import _errors
from gateway._app import refusal_of
from gateway._config.compile import load_config
from gateway._errors import AdminForbidden, ConfigError, MethodNotAllowed, NotFound
from gateway._rules.admin import (
    ADMIN_ROUTES,
    Listener,
    admin_refusal,
    admin_route_error,
    parse_listener,
    peer_allowed,
)
from gateway._rules.forwarded import parse_networks

PRIVATE = ("/__gateway/config", "/__gateway/upstreams", "/__gateway/state", "/__gateway/metrics")
PUBLIC = ("/__gateway/health", "/__gateway/ready")
LOOPBACK = parse_networks(["127.0.0.0/8", "::1"])


async def admin_gateway(nursery: trio.Nursery, **server: Any) -> Gateway:
    up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
    config = simple_config({"u": up}, [{"name": "b", "upstream": "u", "path": "/x"}])
    config["server"] = server
    return await start_gateway(nursery, config)


def client_from(address: str) -> httpx.AsyncClient:
    """A client whose connections leave from ``address`` (the peer the gateway sees)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, timeout=10, trust_env=False)


# --- the rule, without sockets -------------------------------------------------------------


def test_health_and_ready_answer_any_peer_on_any_listener() -> None:
    admin = Listener("127.0.0.1", 9901)
    for path in PUBLIC:
        assert admin_refusal(path, ("203.0.113.9", 1), ("10.0.0.1", 8000), LOOPBACK, admin) is None


def test_private_routes_refuse_a_peer_outside_admin_allow() -> None:
    for path in PRIVATE:
        refusal = admin_refusal(path, ("203.0.113.9", 5000), ("127.0.0.1", 8000), LOOPBACK, None)
        assert isinstance(refusal, AdminForbidden)
        assert (refusal.status, refusal.code) == (403, "admin_forbidden")
        assert admin_refusal(path, ("127.0.0.1", 5000), ("127.0.0.1", 8000), LOOPBACK, None) is None


def test_private_routes_are_not_found_off_the_admin_listener() -> None:
    admin = Listener("127.0.0.1", 9901)
    refusal = admin_refusal(
        "/__gateway/config", ("127.0.0.1", 1), ("127.0.0.1", 8000), LOOPBACK, admin
    )
    assert isinstance(refusal, NotFound)
    on_admin = admin_refusal(
        "/__gateway/config", ("127.0.0.1", 1), ("127.0.0.1", 9901), LOOPBACK, admin
    )
    assert on_admin is None


def test_an_unknown_peer_is_refused() -> None:
    assert not peer_allowed(None, LOOPBACK)
    assert not peer_allowed(("not-an-ip", 0), LOOPBACK)


def test_an_ipv4_peer_on_a_dual_stack_socket_is_matched_as_ipv4() -> None:
    assert peer_allowed(("::ffff:127.0.0.1", 1), LOOPBACK)
    assert peer_allowed(("::1", 1), LOOPBACK)


def test_a_wildcard_or_named_admin_bind_is_told_apart_by_port() -> None:
    assert parse_listener("0.0.0.0:9901") == Listener(None, 9901)
    assert parse_listener("localhost:9901") == Listener(None, 9901)
    assert parse_listener("[::1]:9901") == Listener("::1", 9901)
    assert Listener(None, 9901).matches(("10.1.2.3", 9901))
    assert not Listener("127.0.0.1", 9901).matches(("10.1.2.3", 9901))


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x"])
def test_a_bad_admin_bind_is_a_config_problem(bind: str) -> None:
    text = json.dumps({"version": 1, "server": {"admin_bind": bind}})
    with pytest.raises(ConfigError) as info:
        load_config("gw.yaml", {}, text=text)
    assert [p.path for p in info.value.problems] == ["server.admin_bind"]


def test_a_bad_admin_allow_entry_is_a_config_problem() -> None:
    text = '{"version": 1, "server": {"admin_allow": ["127.0.0.1", "nope"]}}'
    with pytest.raises(ConfigError) as info:
        load_config("gw.yaml", {}, text=text)
    assert [p.path for p in info.value.problems] == ["server.admin_allow[1]"]


def test_the_default_allows_loopback_only() -> None:
    plan = load_config("gw.yaml", {}, text='{"version": 1}')
    assert plan.config.server.admin_allow == ["127.0.0.0/8", "::1"]
    assert plan.admin_listener is None


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PURGE")
ROUTE_PATHS = tuple(f"/__gateway/{name}" for name in ADMIN_ROUTES)
UNKNOWN_ADMIN_PATHS = (
    "/__gateway/",
    "/__gateway/nope",
    "/__gateway/health/x",
    "/__gateway//health",
    "/__gateway/health//",
    "/__gateway/HEALTH",
)
REQUEST_ERROR_CODES = {
    kind.code
    for kind in vars(_errors).values()
    if isinstance(kind, type) and issubclass(kind, _errors.RequestError)
}


@given(
    name=st.one_of(st.sampled_from(ADMIN_ROUTES), st.text(max_size=20)),
    slash=st.booleans(),
    method=st.one_of(st.sampled_from(METHODS), st.text(min_size=1, max_size=10)),
)
def test_admin_routing_serves_get_and_head_of_known_routes_only(
    name: str, slash: bool, method: str
) -> None:
    error = admin_route_error(f"/__gateway/{name}" + "/" * slash, method)
    if name not in ADMIN_ROUTES:
        assert isinstance(error, NotFound)
    elif method in ("GET", "HEAD"):
        assert error is None
    else:
        assert isinstance(error, MethodNotAllowed)
        assert error.allow == ("GET", "HEAD")  # RFC 9110 section 15.5.6


@pytest.mark.parametrize("status", sorted(werkzeug.exceptions.default_exceptions))
def test_every_quart_error_becomes_a_gateway_error_with_a_stable_code(status: int) -> None:
    exc = werkzeug.exceptions.default_exceptions[status]()
    refusal = refusal_of(exc)
    if status >= 500:
        assert refusal is None  # answered 500-like as internal_error: the gateway's fault
        return
    assert refusal is not None
    assert refusal.status == status
    assert refusal.code in REQUEST_ERROR_CODES


def test_a_quart_405_allows_head_where_get_is_allowed() -> None:
    exc = werkzeug.exceptions.MethodNotAllowed(valid_methods=["GET", "OPTIONS"])
    refusal = refusal_of(exc)
    assert refusal is not None and refusal.allow == ("GET", "HEAD")


# --- over real sockets ---------------------------------------------------------------------


async def test_loopback_reads_the_admin_routes_by_default(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        gw = await admin_gateway(nursery)
        for path in PRIVATE + PUBLIC:
            assert (await gw.get(path)).status_code == 200, path


async def test_every_admin_answer_is_json_with_a_code_and_405_has_allow(
    nursery: trio.Nursery,
) -> None:
    """Every method on every admin route and on unknown admin paths: the gateway's JSON
    error body, never a page of the web framework's; 405 lists GET and HEAD."""
    with trio.fail_after(30):
        gw = await admin_gateway(nursery)
        for path in ROUTE_PATHS + UNKNOWN_ADMIN_PATHS:
            for method in METHODS:
                response = await gw.request(method, path)
                where = (method, path, response.status_code, response.text)
                if path in ROUTE_PATHS and method in ("GET", "HEAD"):
                    assert response.status_code in (200, 503), where
                    continue
                assert response.headers["content-type"] == "application/json", where
                if path not in ROUTE_PATHS:
                    assert response.status_code == 404, where
                    code = "not_found"
                else:
                    assert response.status_code == 405, where
                    assert response.headers["allow"] == "GET, HEAD", where
                    code = "method_not_allowed"
                if method == "HEAD":
                    assert response.content == b"", where
                else:
                    assert response.json()["error"]["code"] == code, where


async def test_a_peer_outside_admin_allow_gets_403_but_health_answers(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        gw = await admin_gateway(nursery, admin_allow=["10.0.0.0/8"])
        for path in PRIVATE:
            response = await gw.get(path)
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "admin_forbidden"
        for path in PUBLIC:
            assert (await gw.get(path)).status_code == 200, path
        # the public endpoints are not affected
        assert (await gw.get("/api/1")).status_code == 200


async def test_admin_allow_matches_the_connections_peer_address(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        gw = await admin_gateway(nursery, admin_allow=["127.0.0.2/32"])
        async with client_from("127.0.0.2") as allowed:
            assert (await allowed.get(gw.url + "/__gateway/config")).status_code == 200
        assert (await gw.get("/__gateway/config")).status_code == 403  # from 127.0.0.1


async def test_a_forwarded_header_never_grants_admin_access(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        gw = await admin_gateway(
            nursery, admin_allow=["127.0.0.1/32"], trusted_proxies=["127.0.0.2"]
        )
        async with client_from("127.0.0.2") as proxy:
            for path in PRIVATE:
                response = await proxy.get(gw.url + path, headers={"X-Forwarded-For": "127.0.0.1"})
                assert response.status_code == 403, path


async def test_with_admin_bind_the_private_routes_move_to_their_own_listener(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        gw = await admin_gateway(nursery, admin_bind="127.0.0.1:0")
        assert gw.app.admin_listener is not None
        admin_url = f"http://127.0.0.1:{gw.app.admin_listener.port}"
        assert admin_url != gw.url
        for path in PRIVATE:
            public = await gw.get(path)
            assert public.status_code == 404, path
            assert public.json()["error"]["code"] == "not_found"
            assert (await gw.client.get(admin_url + path)).status_code == 200, path
        for path in PUBLIC:
            assert (await gw.get(path)).status_code == 200, path
        # the admin listener serves nothing but the admin routes
        assert (await gw.get("/api/1")).status_code == 200
        assert (await gw.client.get(admin_url + "/api/1")).status_code == 404


async def test_admin_allow_still_applies_on_the_admin_listener(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        gw = await admin_gateway(nursery, admin_bind="127.0.0.1:0", admin_allow=["10.0.0.0/8"])
        assert gw.app.admin_listener is not None
        admin_url = f"http://127.0.0.1:{gw.app.admin_listener.port}"
        response = await gw.client.get(admin_url + "/__gateway/config")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "admin_forbidden"


@pytest.mark.parametrize(
    ("bind", "admin_bind"),
    [
        ("127.0.0.1:18080", "127.0.0.1:18080"),
        ("0.0.0.0:18080", "127.0.0.1:18080"),
        ("127.0.0.1:18080", "0.0.0.0:18080"),
        ("localhost:18080", "127.0.0.1:18080"),
    ],
)
def test_an_admin_bind_that_overlaps_the_public_bind_is_a_config_problem(
    bind: str, admin_bind: str
) -> None:
    """Else the public port would serve the private routes (with several workers both
    listeners share it) or the gateway would refuse to start with a misleading message."""
    text = json.dumps({"version": 1, "server": {"bind": bind, "admin_bind": admin_bind}})
    with pytest.raises(ConfigError) as info:
        load_config("a.yaml", {}, text=text)
    assert [p.path for p in info.value.problems] == ["server.admin_bind"]
    assert "overlaps server.bind" in str(info.value.problems[0])


def test_an_admin_bind_on_another_port_is_accepted() -> None:
    text = json.dumps(
        {"version": 1, "server": {"bind": "0.0.0.0:18080", "admin_bind": "127.0.0.1:18081"}}
    )
    assert load_config("a.yaml", {}, text=text).admin_listener is not None
