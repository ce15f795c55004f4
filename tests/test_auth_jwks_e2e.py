"""JWT policies with a key set fetched from a real JWKS server on port 0, through the
gateway: RS256 and ES256 tokens pass and their claims reach the upstream; every kind of bad
token is a 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` and no upstream call;
keys rotated by the identity provider work without a restart; a flood of made-up kids
costs at most one fetch per interval; readiness names a policy whose keys have not loaded."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt as pyjwt
import trio
from conftest import recorder, start_gateway, start_upstream
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from upstream import RecordedRequest, Reply

JWKS_PATH = "/.well-known/jwks.json"
ISSUER = "https://idp.test/realms/shop"
RSA_1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_1 = ec.generate_private_key(ec.SECP256R1())


def jwk(private: Any, kid: str) -> dict[str, Any]:
    public = private.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    return {**algorithm.to_jwk(public, as_dict=True), "kid": kid}


def token(private: Any, kid: str | None, alg: str | None = None, **claims: Any) -> str:
    alg = alg or ("ES256" if isinstance(private, ec.EllipticCurvePrivateKey) else "RS256")
    body = {"iss": ISSUER, "aud": "orders-api", "sub": "alice", "exp": int(time.time()) + 300}
    body.update(claims)
    return pyjwt.encode(body, private, algorithm=alg, headers={"kid": kid} if kid else None)


@dataclass
class JwksServer:
    keys: list[dict[str, Any]]
    down: bool = False
    fetches: int = 0

    async def handle(self, request: RecordedRequest) -> Reply:
        self.fetches += 1
        if self.down:
            return Reply(status=503, json={"error": "down"})
        return Reply(json={"keys": self.keys})


async def start(nursery: trio.Nursery, server: JwksServer) -> tuple[Any, list[RecordedRequest]]:
    idp = await start_upstream(nursery, server.handle)
    seen, handler = recorder(lambda req: Reply(json={"user": req.headers.get("x-user")}))
    api = await start_upstream(nursery, handler)
    config = {
        "version": 1,
        "upstreams": {"api": {"url": api.url}},
        "auth": {
            "users": {
                "jwt": {
                    "jwks_url": idp.url + JWKS_PATH,
                    "issuer": ISSUER,
                    "audience": ["orders-api"],
                    "algorithms": ["RS256", "ES256"],
                }
            }
        },
        "endpoints": [
            {
                "path": "/orders",
                "auth": "users",
                "backends": [
                    {
                        "name": "orders",
                        "upstream": "api",
                        "path": "/orders",
                        "headers": {"X-User": "{jwt.sub}"},
                    }
                ],
            }
        ],
    }
    gw = await start_gateway(nursery, config)
    return gw, seen


async def wait_ready(gw: Any) -> None:
    while (await gw.get("/__gateway/ready")).status_code != 200:  # noqa: ASYNC110
        await trio.sleep(0.01)  # another task's fetch, seen only over HTTP


async def get(gw: Any, tok: str) -> httpx.Response:
    response: httpx.Response = await gw.get("/orders", headers={"Authorization": f"Bearer {tok}"})
    return response


async def test_rs256_and_es256_tokens_pass_and_their_claims_reach_the_upstream(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        server = JwksServer([jwk(RSA_1, "r1"), jwk(EC_1, "e1")])
        gw, seen = await start(nursery, server)
        await wait_ready(gw)
        for private, kid, sub in ((RSA_1, "r1", "alice"), (EC_1, "e1", "bob")):
            r = await get(gw, token(private, kid, sub=sub))
            assert r.status_code == 200, r.text
            assert r.json() == {"user": sub}
        assert [req.headers["x-user"] for req in seen] == ["alice", "bob"]


async def test_every_bad_token_is_401_invalid_token_and_no_upstream_is_called(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(30):
        server = JwksServer([jwk(RSA_1, "r1"), jwk(EC_1, "e1")])
        gw, seen = await start(nursery, server)
        await wait_ready(gw)
        public_pem = RSA_1.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header, payload, _ = token(RSA_1, "r1").split(".")
        unsigned = pyjwt.utils.base64url_encode(json.dumps({"alg": "none"}).encode()).decode()
        now = int(time.time())
        bad = {
            "malformed": "not.a.token",
            "expired": token(RSA_1, "r1", exp=now - 600),
            "not yet valid": token(RSA_1, "r1", nbf=now + 600),
            "wrong issuer": token(RSA_1, "r1", iss="https://other/"),
            "wrong audience": token(RSA_1, "r1", aud="billing"),
            "bad signature": f"{header}.{payload}.{token(RSA_2, 'r1').split('.')[2]}",
            "alg none": f"{unsigned}.{payload}.",
            # the classic confusion: the RSA public key used as an HMAC secret
            "HS256 with the public key": _hs256_with(public_pem, "r1"),
            "algorithm outside the allow-list": token(RSA_1, "r1", alg="PS256"),
            "unknown kid that stays unknown": token(RSA_2, "nobody"),
        }
        for name, tok in bad.items():
            r = await get(gw, tok)
            assert r.status_code == 401, (name, r.status_code, r.text)
            assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"', name
            assert r.json()["error"]["code"] == "invalid_token", name
        missing = await gw.get("/orders")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert seen == []


def _hs256_with(secret: bytes, kid: str) -> str:
    """An HS256 token whose HMAC key is ``secret`` (signed by hand: PyJWT itself refuses
    a PEM public key as an HMAC secret)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    claims = {"iss": ISSUER, "aud": "orders-api", "sub": "mallory", "exp": int(time.time()) + 60}
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


async def test_rotated_keys_pass_without_a_restart_and_made_up_kids_fetch_at_most_once(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(60):
        server = JwksServer([jwk(RSA_1, "r1")])
        gw, seen = await start(nursery, server)
        await wait_ready(gw)
        assert (await get(gw, token(RSA_1, "r1"))).status_code == 200
        # the identity provider rotates: r2 replaces r1, and its first token passes
        server.keys = [jwk(RSA_2, "r2")]
        r = await get(gw, token(RSA_2, "r2"))
        assert r.status_code == 200, r.text
        assert (await get(gw, token(RSA_1, "r1"))).status_code == 401  # r1 is gone
        before = server.fetches
        statuses: list[int] = []

        async def made_up(count: int) -> None:
            for _ in range(count):
                statuses.append((await get(gw, token(RSA_2, secrets.token_hex(8)))).status_code)

        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(made_up, 50)
        assert statuses == [401] * 1000
        # the rotation's refetch was the last of this interval (30 s): not one more
        assert server.fetches - before <= 1
        assert len(seen) == 2


async def test_until_the_keys_load_tokens_are_refused_and_readiness_names_the_policy(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        server = JwksServer([jwk(RSA_1, "r1")], down=True)
        gw, seen = await start(nursery, server)
        while server.fetches == 0:  # noqa: ASYNC110 - the first fetch, in another task
            await trio.sleep(0.01)
        ready = await gw.get("/__gateway/ready")
        assert ready.status_code == 503
        assert ready.json()["auth_keys_missing"] == ["users"]
        r = await get(gw, token(RSA_1, "r1"))
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert seen == []
