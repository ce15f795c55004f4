"""Authentication at the edge over real sockets: API keys, forward auth, HS256 tokens,
roles and scopes, opting out, any-of policies, rate limits per subject and caches per
identity. A refused request never reaches an upstream."""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import trio
import trio.testing
from conftest import recorder, start_gateway, start_upstream
from upstream import RecordedRequest, Reply

SECRET = "an-hmac-secret-of-32-bytes-or-more!"
TIMEOUT_S = 10


def token(claims: dict[str, Any] | None = None, *, secret: str = SECRET, **header: Any) -> str:
    now = int(time.time())
    body = {"sub": "alice", "iss": "https://idp.test/", "aud": "orders-api", "exp": now + 60}
    body.update(claims or {})
    return pyjwt.encode(body, secret, algorithm="HS256", headers=header or None)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def jwt_policy(**extra: Any) -> dict[str, Any]:
    return {
        "jwt": {
            "secret": SECRET,
            "algorithms": ["HS256"],
            "issuer": "https://idp.test/",
            "audience": ["orders-api"],
            "leeway": "1s",
        },
        **extra,
    }


def write_keys(tmp_path: Path, **keys: str) -> str:
    path = tmp_path / "api-keys.txt"
    lines = [f"{name} {hashlib.sha256(key.encode()).hexdigest()}" for name, key in keys.items()]
    path.write_text("# name sha256-hex\n" + "\n".join(lines) + "\n")
    return str(path)


def gateway_config(
    upstreams: dict[str, str],
    auth: dict[str, Any],
    endpoints: list[dict[str, Any]],
    **top: Any,
) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {name: {"url": url} for name, url in upstreams.items()},
        "auth": auth,
        "endpoints": endpoints,
        **top,
    }


def endpoint(path: str, auth: Any, *backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "path": path,
        "auth": auth,
        "backends": list(backends) or [{"name": "data", "upstream": "api", "path": "/data"}],
        **extra,
    }


# --- API keys ------------------------------------------------------------------------------


async def test_api_key_right_passes_and_its_name_reaches_the_upstream(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            keys = write_keys(tmp_path, acme="k-acme-123", beta="k-beta-456")
            backend = {
                "name": "data",
                "upstream": "api",
                "path": "/data",
                "headers": {"X-Partner": "{apikey.name}"},
            }
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    {"partners": {"api_key": {"keys_file": keys}}},
                    [endpoint("/p", "partners", backend)],
                ),
            )
            response = await gw.get("/p", headers={"X-Api-Key": "k-beta-456"})
            assert response.status_code == 200
            assert [r.headers["x-partner"] for r in seen] == ["beta"]
            assert "x-api-key" not in seen[0].headers  # the key itself is not forwarded
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("headers", "code"),
    [({"X-Api-Key": "k-wrong"}, "invalid_token"), ({}, "unauthorized")],
    ids=["wrong", "missing"],
)
async def test_api_key_wrong_or_missing_is_401_and_no_upstream_is_called(
    tmp_path: Path, headers: dict[str, str], code: str
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            keys = write_keys(tmp_path, acme="k-acme-123")
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    {"partners": {"api_key": {"keys_file": keys}}},
                    [endpoint("/p", "partners")],
                ),
            )
            response = await gw.get("/p", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == code
            assert response.headers["www-authenticate"] == 'ApiKey header="X-Api-Key"'
            assert seen == []
            nursery.cancel_scope.cancel()


# --- forward auth --------------------------------------------------------------------------


async def test_forward_auth_2xx_copies_its_headers_to_every_backend_call() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            asked, auth_handler = recorder(
                lambda req: Reply(json={}, headers=[("X-User-Id", "u-7"), ("X-Other", "no")])
            )
            authsvc = await start_upstream(nursery, auth_handler)
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            backends = [
                {"name": "a", "upstream": "api", "path": "/a"},
                {"name": "b", "upstream": "api", "path": "/b"},
            ]
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url, "authsvc": authsvc.url},
                    {
                        "sso": {
                            "forward": {
                                "upstream": "authsvc",
                                "path": "/verify",
                                "copy_request_headers": ["Authorization"],
                                "copy_response_headers": ["X-User-Id"],
                            }
                        }
                    },
                    [endpoint("/s", "sso", *backends)],
                ),
            )
            response = await gw.get(
                "/s", headers={"Authorization": "Bearer opaque", "Cookie": "sid=1", "X-Trace": "t"}
            )
            assert response.status_code == 200
            (sub,) = asked
            assert sub.path == "/verify"
            assert sub.headers["authorization"] == "Bearer opaque"
            assert "cookie" not in sub.headers and "x-trace" not in sub.headers
            assert sorted(r.path for r in seen) == ["/a", "/b"]
            assert all(r.headers.get("x-user-id") == "u-7" for r in seen)
            assert all("x-other" not in r.headers for r in seen)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("answers_the_field", [True, False])
async def test_a_clients_own_copy_of_a_field_the_auth_service_speaks_for_never_reaches_a_backend(
    answers_the_field: bool,
) -> None:
    """Even when the endpoint forwards the client's X-User-Id, the auth service's value
    replaces it, and without one no client value goes through either."""
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            fields = [("X-User-Id", "u-9")] if answers_the_field else []
            _, auth_handler = recorder(lambda req: Reply(json={}, headers=fields))
            authsvc = await start_upstream(nursery, auth_handler)
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            policy = {
                "forward": {
                    "upstream": "authsvc",
                    "path": "/verify",
                    "copy_request_headers": ["Authorization"],
                    "copy_response_headers": ["X-User-Id"],
                }
            }
            ep = endpoint("/f", "sso", forward_headers=["X-User-Id", "X-Trace"])
            gw = await start_gateway(
                nursery,
                gateway_config({"api": api.url, "authsvc": authsvc.url}, {"sso": policy}, [ep]),
            )
            response = await gw.get(
                "/f",
                headers=[
                    ("Authorization", "Bearer good"),
                    ("X-User-Id", "admin"),
                    ("x-user-id", "root"),
                    ("X-Trace", "t"),
                ],
            )
            assert response.status_code == 200, response.text
            (call,) = seen
            assert call.headers.get("x-user-id") == ("u-9" if answers_the_field else None)
            assert call.headers["x-trace"] == "t"  # other forwarded fields are untouched
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("status", [401, 403])
async def test_forward_auth_refusal_is_passed_to_the_client_as_it_came(status: int) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            refusal = Reply(
                status=status,
                body=b"<p>go away</p>",
                headers=[
                    ("Content-Type", "text/html"),
                    ("WWW-Authenticate", 'Basic realm="sso"'),
                    ("X-Internal", "secret"),
                ],
            )
            _, auth_handler = recorder(lambda req: refusal)
            authsvc = await start_upstream(nursery, auth_handler)
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url, "authsvc": authsvc.url},
                    {"sso": {"forward": {"upstream": "authsvc", "path": "/verify"}}},
                    [endpoint("/s", "sso")],
                ),
            )
            response = await gw.get("/s")
            assert response.status_code == status
            assert response.content == b"<p>go away</p>"
            assert response.headers["www-authenticate"] == 'Basic realm="sso"'
            assert response.headers["content-type"] == "text/html"
            assert "x-internal" not in response.headers
            assert seen == []
            nursery.cancel_scope.cancel()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("fault", ["down", "slow", "http_500"])
async def test_forward_auth_that_cannot_answer_is_503_never_a_pass(fault: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            if fault == "down":
                auth_url = f"http://127.0.0.1:{_closed_port()}"
            else:
                reply = Reply(delay_s=5) if fault == "slow" else Reply(status=500)
                authsvc = await start_upstream(nursery, recorder(lambda req: reply)[1])
                auth_url = authsvc.url
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url, "authsvc": auth_url},
                    {"sso": {"forward": {"upstream": "authsvc", "path": "/v", "timeout": "200ms"}}},
                    [endpoint("/s", "sso")],
                ),
            )
            started = trio.current_time()
            response = await gw.get("/s", headers={"Authorization": "Bearer x"})
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "auth_unavailable"
            assert trio.current_time() - started < 2  # bounded by the timeout, not the delay
            assert seen == []
            nursery.cancel_scope.cancel()


# --- JWT (HS256 through `secret`) -----------------------------------------------------------


async def test_a_valid_token_passes_and_its_claims_reach_the_upstream() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            backend = {
                "name": "data",
                "upstream": "api",
                "path": "/orgs/{jwt.org.id}/orders",
                "headers": {"X-User-Id": "{jwt.sub}"},
            }
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url}, {"users": jwt_policy()}, [endpoint("/o", "users", backend)]
                ),
            )
            good = token({"org": {"id": 42}})
            response = await gw.get("/o", headers=bearer(good))
            assert response.status_code == 200, response.text
            (call,) = seen
            assert call.path == "/orgs/42/orders"
            assert call.headers["x-user-id"] == "alice"
            assert "authorization" not in call.headers
            nursery.cancel_scope.cancel()


def _invalid_tokens() -> dict[str, tuple[dict[str, Any], str]]:
    now = int(time.time())
    unsigned = pyjwt.encode({"sub": "a", "exp": now + 60}, None, algorithm="none")
    return {
        "missing": ({}, "Bearer"),
        "other_scheme": ({"Authorization": "Basic YTpi"}, "Bearer"),
        "malformed": (bearer("not.a.token"), 'Bearer error="invalid_token"'),
        "not_ascii": (
            {"Authorization": "Bearer \xe9t\xe9".encode("latin-1")},
            'Bearer error="invalid_token"',
        ),
        "expired": (bearer(token({"exp": now - 120})), 'Bearer error="invalid_token"'),
        "no_exp": (bearer(token({"exp": None})), 'Bearer error="invalid_token"'),
        "not_yet_valid": (bearer(token({"nbf": now + 120})), 'Bearer error="invalid_token"'),
        "wrong_issuer": (bearer(token({"iss": "https://evil/"})), 'Bearer error="invalid_token"'),
        "wrong_audience": (bearer(token({"aud": "other"})), 'Bearer error="invalid_token"'),
        "bad_signature": (
            bearer(token(secret="another-secret-of-32-bytes-or-more")),
            'Bearer error="invalid_token"',
        ),
        "alg_none": (bearer(unsigned), 'Bearer error="invalid_token"'),
    }


INVALID = _invalid_tokens()


@pytest.mark.parametrize("case", list(INVALID))
async def test_an_invalid_token_is_401_with_its_challenge_and_no_upstream_call(case: str) -> None:
    headers, challenge = INVALID[case]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url}, {"users": jwt_policy()}, [endpoint("/o", "users")]
                ),
            )
            response = await gw.get("/o", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == challenge
            code = "unauthorized" if challenge == "Bearer" else "invalid_token"
            assert response.json()["error"]["code"] == code
            assert seen == []
            nursery.cancel_scope.cancel()


async def test_tokens_are_read_from_a_cookie_or_the_query_when_configured() -> None:
    policy = jwt_policy()
    policy["jwt"]["token_from"] = ["cookie.session", "query.access_token"]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            gw = await start_gateway(
                nursery,
                gateway_config({"api": api.url}, {"users": policy}, [endpoint("/o", "users")]),
            )
            by_cookie = await gw.get("/o", headers={"Cookie": f"a=b; session={token()}"})
            by_query = await gw.get("/o", params={"access_token": token()})
            by_header = await gw.get("/o", headers=bearer(token()))
            assert [by_cookie.status_code, by_query.status_code] == [200, 200]
            assert by_header.status_code == 401  # not a place this policy looks
            assert len(seen) == 2
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("match", "claims", "status"),
    [
        ("all", {"realm_access": {"roles": ["admin", "dev"]}, "scope": "orders:read x"}, 200),
        ("all", {"realm_access": {"roles": ["admin"]}, "scope": "orders:read x"}, 403),
        ("all", {"realm_access": {"roles": ["admin", "dev"]}, "scope": "orders:read"}, 403),
        ("any", {"realm_access": {"roles": ["dev"]}, "scope": "x"}, 200),
        ("any", {"realm_access": {"roles": ["guest"]}, "scope": "x"}, 403),
        ("any", {"realm_access": {"roles": ["dev"]}, "scope": "y"}, 403),
        ("any", {"scope": "x"}, 403),
    ],
)
async def test_roles_and_scopes_are_required_with_match_all_or_any(
    match: str, claims: dict[str, Any], status: int
) -> None:
    require = {
        "roles": ["admin", "dev"],
        "roles_claim": "realm_access.roles",
        "scopes": ["orders:read", "x"],
        "match": match,
    }
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    {"admins": jwt_policy(require=require)},
                    [endpoint("/o", "admins")],
                ),
            )
            response = await gw.get("/o", headers=bearer(token(claims)))
            assert response.status_code == status
            if status == 403:
                assert response.json()["error"]["code"] == "insufficient_scope"
                assert response.headers["www-authenticate"] == (
                    'Bearer error="insufficient_scope", scope="orders:read x"'
                )
                assert seen == []
            nursery.cancel_scope.cancel()


async def test_a_claim_a_template_reads_and_the_token_lacks_is_403_before_any_call() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            backend = {"name": "d", "upstream": "api", "path": "/d/{jwt.org.id}"}
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url}, {"users": jwt_policy()}, [endpoint("/o", "users", backend)]
                ),
            )
            response = await gw.get("/o", headers=bearer(token()))
            assert response.status_code == 403
            error = response.json()["error"]
            assert (error["code"], error["claim"]) == ("missing_claim", "org.id")
            assert seen == []
            nursery.cancel_scope.cancel()


# --- which endpoints, which policies -------------------------------------------------------


async def test_defaults_auth_protects_every_endpoint_but_one_that_opts_out() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    {"users": jwt_policy()},
                    [
                        {
                            "path": "/closed",
                            "backends": [{"name": "d", "upstream": "api", "path": "/c"}],
                        },
                        endpoint("/open", None),
                    ],
                    defaults={"auth": "users"},
                ),
            )
            assert (await gw.get("/closed")).status_code == 401
            assert (await gw.get("/open")).status_code == 200
            assert [r.path for r in seen] == ["/data"]
            nursery.cancel_scope.cancel()


async def test_any_one_of_several_policies_may_pass(tmp_path: Path) -> None:
    keys = write_keys(tmp_path, acme="k-acme-123")
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    {"users": jwt_policy(), "partners": {"api_key": {"keys_file": keys}}},
                    [endpoint("/o", ["users", "partners"])],
                ),
            )
            assert (await gw.get("/o", headers=bearer(token()))).status_code == 200
            assert (await gw.get("/o", headers={"X-Api-Key": "k-acme-123"})).status_code == 200
            nothing = await gw.get("/o")
            assert nothing.status_code == 401
            # no credentials at all: one 401 with every policy's challenge
            assert nothing.headers["www-authenticate"] == 'Bearer, ApiKey header="X-Api-Key"'
            # a wrong key is more specific than the missing token
            wrong = await gw.get("/o", headers={"X-Api-Key": "nope"})
            assert wrong.json()["error"]["code"] == "invalid_token"
            assert wrong.headers["www-authenticate"] == 'ApiKey header="X-Api-Key"'
            assert len(seen) == 2
            nursery.cancel_scope.cancel()


# --- rate limits and caches per identity ---------------------------------------------------


async def test_a_rate_limit_per_subject_counts_each_subject_apart() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            _, handler = recorder()
            api = await start_upstream(nursery, handler)
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    {"users": jwt_policy()},
                    [endpoint("/o", "users", rate_limit={"rate": "2/h", "key": "jwt:sub"})],
                ),
            )
            alice, bob = bearer(token({"sub": "alice"})), bearer(token({"sub": "bob"}))
            statuses = [(await gw.get("/o", headers=alice)).status_code for _ in range(3)]
            assert statuses == [200, 200, 429]
            assert (await gw.get("/o", headers=bob)).status_code == 200
            # a refused token is refused before the limit: it spends nobody's budget
            assert (await gw.get("/o", headers=bearer("x.y.z"))).status_code == 401
            nursery.cancel_scope.cancel()


async def test_one_identitys_cached_answer_never_reaches_another() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            # the upstream's answer names who asked (from the header the gateway set)
            seen, handler = recorder(lambda req: Reply(json={"for": req.headers["x-user"]}))
            api = await start_upstream(nursery, handler)
            backend = {
                "name": "me",
                "upstream": "api",
                "path": "/me",
                "headers": {"X-User": "{jwt.sub}"},
                "cache": {"ttl": "60s"},
            }
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    {"users": jwt_policy()},
                    [endpoint("/me", "users", backend, cache={"ttl": "60s"})],
                ),
            )
            alice, bob = bearer(token({"sub": "alice"})), bearer(token({"sub": "bob"}))
            first = await gw.get("/me", headers=alice)
            again = await gw.get("/me", headers=alice)
            other = await gw.get("/me", headers=bob)
            assert first.json() == {"for": "alice"}
            assert again.headers["x-cache"] == "hit"
            assert other.headers["x-cache"] == "miss"
            assert other.json() == {"for": "bob"}
            assert len(seen) == 2
            nursery.cancel_scope.cancel()


async def test_concurrent_calls_of_different_identities_are_never_coalesced() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            arrived = [trio.Event(), trio.Event()]
            release = trio.Event()
            calls: list[RecordedRequest] = []

            async def handler(req: RecordedRequest) -> Reply:
                calls.append(req)
                n = len(calls)
                arrived[min(n, 2) - 1].set()
                if n == 1:
                    await release.wait()
                return Reply(json={"n": n})

            api = await start_upstream(nursery, handler)
            # the call does not depend on who asks: only the identity tells them apart
            backend = {"name": "d", "upstream": "api", "path": "/d", "cache": {"ttl": "60s"}}
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url}, {"users": jwt_policy()}, [endpoint("/o", "users", backend)]
                ),
            )
            answers: dict[str, Any] = {}

            async def ask(sub: str) -> None:
                answers[sub] = (await gw.get("/o", headers=bearer(token({"sub": sub})))).json()

            async with trio.open_nursery() as requests:
                requests.start_soon(ask, "alice")
                await arrived[0].wait()
                requests.start_soon(ask, "bob")
                await arrived[1].wait()  # bob's call reaches the upstream on its own
                release.set()
            assert answers["alice"] == {"n": 1}
            assert answers["bob"] == {"n": 2}
            nursery.cancel_scope.cancel()


async def test_passthrough_endpoints_are_authenticated_too() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            backend = {
                "name": "d",
                "upstream": "api",
                "path": "/raw",
                "headers": {"X-User": "{jwt.sub}"},
            }
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    {"users": jwt_policy()},
                    [endpoint("/raw", "users", backend, passthrough=True)],
                ),
            )
            assert (await gw.get("/raw")).status_code == 401
            assert seen == []
            assert (await gw.get("/raw", headers=bearer(token()))).status_code == 200
            assert [r.headers["x-user"] for r in seen] == ["alice"]
            nursery.cancel_scope.cancel()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_refusal_reason_is_in_the_access_log_and_the_token_never_is() -> None:
    expired = token({"exp": int(time.time()) - 600})
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            _, handler = recorder()
            api = await start_upstream(nursery, handler)
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url}, {"users": jwt_policy()}, [endpoint("/o", "users")]
                ),
            )
            lines = _Lines()
            access_log = logging.getLogger("gateway.access")
            access_log.addHandler(lines)
            level = access_log.level
            access_log.setLevel(logging.INFO)
            try:
                await gw.get("/o", headers=bearer(expired))
                await gw.get("/o", headers=bearer(token()))
                while len(lines.records) < 2:  # written once each response is sent
                    await trio.testing.wait_all_tasks_blocked(0.001)
            finally:
                access_log.removeHandler(lines)
                access_log.setLevel(level)
            nursery.cancel_scope.cancel()
    refused, passed = (r.access for r in lines.records)
    assert refused["auth"] == {"refused": "invalid_token", "reason": "expired"}
    assert passed["auth"] == {"policy": "users"}
    assert expired not in str(refused) and "alice" not in str(passed)


async def test_credentials_sent_more_than_one_way_are_400_and_reach_no_upstream(
    tmp_path: Path,
) -> None:
    """RFC 6750 section 2: one token, one way; which one would count is not ours to guess."""
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            seen, handler = recorder()
            api = await start_upstream(nursery, handler)
            keys = write_keys(tmp_path, acme="k-acme", other="k-other")
            policies = {
                "users": jwt_policy(),
                "both": {
                    "jwt": {
                        **jwt_policy()["jwt"],
                        "token_from": ["header.Authorization", "query.access_token"],
                    }
                },
                "partners": {"api_key": {"header": "X-Api-Key", "keys_file": keys}},
            }
            gw = await start_gateway(
                nursery,
                gateway_config(
                    {"api": api.url},
                    policies,
                    [
                        endpoint("/j", "users"),
                        endpoint("/q", "both"),
                        endpoint("/k", "partners"),
                    ],
                ),
            )
            good = token()
            cases = [
                ("/j", [("Authorization", f"Bearer {good}"), ("Authorization", "Bearer junk")]),
                ("/j", [("Authorization", "Bearer junk"), ("Authorization", f"Bearer {good}")]),
                (f"/q?access_token={good}", [("Authorization", f"Bearer {good}")]),
                ("/k", [("X-Api-Key", "k-acme"), ("X-Api-Key", "k-other")]),
            ]
            for target, headers in cases:
                r = await gw.get(target, headers=headers)
                assert r.status_code == 400, (target, r.status_code, r.text)
                assert r.json()["error"]["code"] == "invalid_request"
            assert (await gw.get("/j", headers=bearer(good))).status_code == 200
            assert len(seen) == 1
            nursery.cancel_scope.cancel()
