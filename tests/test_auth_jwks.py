"""JWK Sets (gateway._auth.jwks): parsing, and a KeySet fed by a real JWKS server on
127.0.0.1 port 0 through an httpx fetch, as the gateway will feed it through its transport.

The unknown-kid limiter's clock is injected (a plain float moved by the test), so interval
logic needs no sleeping; the run loop's own timers use trio's clock with short refresh
periods, and the tests wait for the fetch they expect, never for a fixed time.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import trio
from conftest import start_upstream
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from upstream import RecordedRequest, Reply

from gateway._auth.jwks import KeySet, RefetchLimiter, load_jwks_file, parse_jwks
from gateway._auth.jwt import JwtSettings, TokenRejected, verify
from gateway._errors import JwksError

NOW = 1_800_000_000.0
JWKS_PATH = "/.well-known/jwks.json"
POLICY = JwtSettings("https://issuer/", ("orders-api",), ("RS256", "ES256"), leeway_s=30)
RSA_1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_1 = ec.generate_private_key(ec.SECP256R1())


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = private.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    return {**algorithm.to_jwk(public, as_dict=True), "kid": kid, **extra}


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def token(private: Any, kid: str) -> str:
    alg = "ES256" if isinstance(private, ec.EllipticCurvePrivateKey) else "RS256"
    claims = {"iss": "https://issuer/", "aud": "orders-api", "sub": "u", "exp": NOW + 300}
    return pyjwt.encode(claims, private, algorithm=alg, headers={"kid": kid})


def reason(tok: str, keys: KeySet) -> str:
    with pytest.raises(TokenRejected) as info:
        verify(tok, keys, POLICY, NOW)
    return info.value.reason


# --- parsing -------------------------------------------------------------------------------


def test_parse_jwks_keeps_usable_keys_and_logs_the_others(caplog: pytest.LogCaptureFixture) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    document = jwks(
        jwk(RSA_1, "rsa", use="sig", alg="RS256"),
        jwk(EC_1, "ec"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
        jwk(RSA_2, "enc", use="enc"),
        jwk(RSA_2, "ops", key_ops=["encrypt"]),
        {
            "kty": "OKP",
            "kid": "ed",
            "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        },
        {**jwk(RSA_2, "private"), "d": "AQAB"},
        jwk(small, "small"),
        jwk(EC_1, "wrong-alg", alg="RS256"),
        {"kty": "RSA", "kid": "broken", "n": 7, "e": "AQAB"},
        "not an object",
    )
    with caplog.at_level(logging.WARNING, logger="gateway"):
        keys = parse_jwks(document, "test")
    assert keys.kids() == {"rsa", "ec"}
    assert keys.lookup("rsa", "RS256") is not None and keys.lookup("ec", "ES256") is not None
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 9
    assert any("'hmac'" in m and "symmetric" in m for m in skipped)
    assert any("'private'" in m and "private key members" in m for m in skipped)


@pytest.mark.parametrize(
    "document",
    [b"not json", b"[]", b"{}", b'{"keys": {}}', b'{"keys": []}', b'{"keys": [{"kty": "oct"}]}'],
)
def test_parse_jwks_refuses_a_document_without_usable_keys(document: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(document, "test")


def test_load_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(RSA_1, "rsa")))
    assert load_jwks_file(str(path)).kids() == {"rsa"}
    with pytest.raises(JwksError, match="cannot read"):
        load_jwks_file(str(tmp_path / "missing.json"))


def test_refetch_limiter_grants_one_per_interval() -> None:
    limiter = RefetchLimiter(30)
    assert limiter.allow(0.0)
    assert not limiter.allow(29.9)
    assert limiter.allow(30.0)
    assert not limiter.allow(59.0)
    assert limiter.allow(100.0)


# --- a KeySet fed by a real JWKS server ----------------------------------------------------


@dataclass
class JwksServer:
    """What the JWKS endpoint answers (``None``: 500), and the fetches made so far."""

    document: bytes | None
    fetches: int = 0
    _fetched: list[trio.Event] = field(default_factory=list)

    def fetched(self, n: int) -> trio.Event:
        """Set when fetch number ``n`` (1-based) has returned or raised. The key set handles
        the result with no checkpoint in between, so a task woken by this event sees it
        handled (trio runs the fetching task on until its next checkpoint)."""
        while len(self._fetched) < n:
            self._fetched.append(trio.Event())
        return self._fetched[n - 1]

    async def handle(self, request: RecordedRequest) -> Reply:
        assert request.path == JWKS_PATH
        if self.document is None:
            return Reply(status=500, json={"error": "down"})
        return Reply(body=self.document, headers=[("content-type", "application/json")])


@asynccontextmanager
async def running_key_set(
    server: JwksServer,
    *,
    refresh_s: float = 3600,
    min_refetch_interval_s: float = 30,
    fetch_timeout_s: float = 2,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[KeySet]:
    """A JWKS server on port 0 and a started KeySet fetching from it with httpx."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(trust_env=False) as client:
        up = await start_upstream(nursery, server.handle)

        async def fetch() -> bytes:
            server.fetches += 1
            try:
                response = await client.get(up.url + JWKS_PATH)
                response.raise_for_status()
                return response.content
            finally:
                server.fetched(server.fetches).set()

        options: dict[str, Any] = {"clock": clock} if clock is not None else {}
        key_set = KeySet(
            "users",
            min_refetch_interval_s=min_refetch_interval_s,
            fetch_timeout_s=fetch_timeout_s,
            **options,
        )
        await nursery.start(key_set.run, fetch, refresh_s)
        yield key_set
        nursery.cancel_scope.cancel()


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


async def test_key_set_loads_at_start_and_verifies_tokens() -> None:
    with trio.fail_after(10):
        server = JwksServer(jwks(jwk(RSA_1, "rsa-1"), jwk(EC_1, "ec-1")))
        async with running_key_set(server) as keys:
            assert keys.loaded
            assert verify(token(RSA_1, "rsa-1"), keys, POLICY, NOW)["sub"] == "u"
            assert verify(token(EC_1, "ec-1"), keys, POLICY, NOW)["sub"] == "u"
            assert keys.statistics().keys == 2


async def test_no_key_set_yet_is_not_loaded_and_refuses_tokens() -> None:
    with trio.fail_after(10):
        server = JwksServer(None)
        async with running_key_set(server) as keys:
            assert not keys.loaded
            assert reason(token(RSA_1, "rsa-1"), keys) == "no_keys"
            assert keys.statistics().fetch_failures == 1


async def test_first_fetch_is_bounded_by_its_deadline() -> None:
    with trio.fail_after(10):
        server = JwksServer(jwks(jwk(RSA_1, "rsa-1")))

        async def hang(request: RecordedRequest) -> Reply:
            return Reply(fault="hang")

        server.handle = hang  # type: ignore[method-assign]
        start = trio.current_time()
        async with running_key_set(server, fetch_timeout_s=0.3) as keys:
            assert not keys.loaded
            assert trio.current_time() - start < 2


async def test_a_failed_first_fetch_is_retried_and_then_loads() -> None:
    with trio.fail_after(10):
        server = JwksServer(None)
        async with running_key_set(server, refresh_s=3600, min_refetch_interval_s=0.1) as keys:
            server.document = jwks(jwk(RSA_1, "rsa-1"))
            await server.fetched(2).wait()  # the retry, after min_refetch_interval_s
            assert keys.loaded


async def test_failed_refresh_keeps_the_old_keys() -> None:
    with trio.fail_after(10):
        server = JwksServer(jwks(jwk(RSA_1, "rsa-1")))
        async with running_key_set(server, refresh_s=0.1, min_refetch_interval_s=0.1) as keys:
            server.document = None
            await server.fetched(2).wait()  # the first refresh has failed
            server.document = b'{"keys": []}'
            await server.fetched(3).wait()  # and a refresh with no usable key
            assert keys.loaded
            assert verify(token(RSA_1, "rsa-1"), keys, POLICY, NOW)["sub"] == "u"
            assert keys.statistics().fetch_failures == 2


async def test_rotation_arrives_with_the_periodic_refresh() -> None:
    with trio.fail_after(10):
        server = JwksServer(jwks(jwk(RSA_1, "old")))
        async with running_key_set(server, refresh_s=0.1, min_refetch_interval_s=3600) as keys:
            assert reason(token(RSA_2, "new"), keys) == "unknown_key"
            server.document = jwks(jwk(RSA_2, "new"))
            await server.fetched(2).wait()  # a refresh that began after the rotation
            assert verify(token(RSA_2, "new"), keys, POLICY, NOW)["sub"] == "u"
            assert reason(token(RSA_1, "old"), keys) == "unknown_key"


async def test_rotation_arrives_with_an_unknown_kid_refetch_without_restart() -> None:
    with trio.fail_after(10):
        clock = FakeClock()
        server = JwksServer(jwks(jwk(RSA_1, "old")))
        async with running_key_set(server, clock=clock) as keys:
            server.document = jwks(jwk(RSA_1, "old"), jwk(RSA_2, "new"))
            clock.now_s = 31  # past the interval since the first fetch
            new = token(RSA_2, "new")
            assert reason(new, keys) == "unknown_key"  # fails fast, asks for a refetch
            assert await keys.wait_for_refetch(timeout_s=2)
            assert verify(new, keys, POLICY, NOW)["sub"] == "u"
            assert verify(token(RSA_1, "old"), keys, POLICY, NOW)["sub"] == "u"
            assert server.fetches == 2


async def test_a_flood_of_unknown_kids_fetches_at_most_once_per_interval() -> None:
    with trio.fail_after(10):
        clock = FakeClock()
        server = JwksServer(jwks(jwk(RSA_1, "rsa-1")))
        async with running_key_set(server, clock=clock, min_refetch_interval_s=30) as keys:

            async def flood() -> None:
                for _ in range(1000):
                    assert keys.lookup(secrets.token_hex(8), "RS256") is None

            # the periodic first fetch does not count: the first unknown kid is granted a
            # refetch at once (a key rotated just after it is found), the others wait for it
            await flood()
            assert await keys.wait_for_refetch(timeout_s=2)
            await flood()  # after the refetch, still inside the same interval
            assert not await keys.wait_for_refetch(timeout_s=2)
            assert server.fetches == 2
            for interval in (1, 2, 3):
                clock.now_s = 30.0 * interval + 0.5
                await flood()
                await keys.wait_for_refetch(timeout_s=2)
                await flood()  # after the refetch, still inside the same interval
                assert not await keys.wait_for_refetch(timeout_s=2)
                assert server.fetches == 2 + interval
            stats = keys.statistics()
            assert stats.refetches == 4
            # kids seen while a refetch is pending wait for it and are not counted
            assert stats.refetches_limited == 1000 + 3 * 1000


async def test_a_refetch_asked_for_during_a_fetch_waits_for_the_next_fetch() -> None:
    """The fetch under way may carry a document older than the new kid."""
    with trio.fail_after(10):
        clock = FakeClock()
        server = JwksServer(jwks(jwk(RSA_1, "old")))
        release = trio.Event()
        in_flight = trio.Event()
        serve = server.handle

        async def slow_second_fetch(request: RecordedRequest) -> Reply:
            document = server.document  # what the server had when asked
            if len(up_requests) == 1:
                in_flight.set()
                await release.wait()
            up_requests.append(request)
            return Reply(body=document) if document else await serve(request)

        up_requests: list[RecordedRequest] = []
        server.handle = slow_second_fetch  # type: ignore[method-assign]
        async with running_key_set(server, refresh_s=0.05, clock=clock) as keys:
            await in_flight.wait()  # the periodic refresh is under way, with the old document
            server.document = jwks(jwk(RSA_1, "old"), jwk(RSA_2, "new"))
            clock.now_s = 100
            new = token(RSA_2, "new")
            assert reason(new, keys) == "unknown_key"
            release.set()
            assert await keys.wait_for_refetch(timeout_s=2)
            assert server.fetches == 3
            assert verify(new, keys, POLICY, NOW)["sub"] == "u"


async def test_waiting_requests_share_one_refetch() -> None:
    with trio.fail_after(10):
        clock = FakeClock()
        server = JwksServer(jwks(jwk(RSA_1, "rsa-1")))
        async with running_key_set(server, clock=clock) as keys:
            clock.now_s = 31
            results: list[bool] = []

            async def one_request() -> None:
                keys.lookup(secrets.token_hex(8), "RS256")
                results.append(await keys.wait_for_refetch(timeout_s=2))

            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(one_request)
            assert results == [True] * 50
            assert server.fetches == 2


def test_key_set_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        KeySet("users", fetch_timeout_s=0)
    with pytest.raises(ValueError):
        KeySet("users", min_refetch_interval_s=-1)


async def test_run_refuses_a_non_positive_refresh() -> None:
    async def fetch() -> bytes:
        raise AssertionError("not called")

    keys = KeySet("users")
    with pytest.raises(ValueError, match="refresh_s"):
        await keys.run(fetch, 0)
