"""Property: no request that an auth policy refuses ever reaches an upstream.

Hypothesis makes sequences of requests with every kind of credential (valid, expired,
wrongly signed, for another audience, without the required scope, tampered, random text,
API keys right and wrong, in headers, cookies and the query) against a gateway with a JWT
policy, an API key policy and a forward auth policy; after each refused request the
upstream must have recorded nothing new, and each request built to pass must pass.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import trio
from conftest import start_gateway, start_upstream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from upstream import RecordedRequest, Reply

SECRET = "an-hmac-secret-of-32-bytes-or-more!"
OTHER_SECRET = "another-secret-of-32-bytes-or-more"
GOOD_KEY = "k-partner-0001"


def _token(sub: str, kind: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "iss": "https://idp.test/",
        "aud": "orders-api",
        "exp": now + 300,
        "scope": "orders:read",
    }
    secret = SECRET
    if kind == "expired":
        claims["exp"] = now - 600
    elif kind == "wrong_secret":
        secret = OTHER_SECRET
    elif kind == "wrong_audience":
        claims["aud"] = "billing"
    elif kind == "no_scope":
        claims["scope"] = "orders:write"
    elif kind == "not_yet":
        claims["nbf"] = now + 600
    text = pyjwt.encode(claims, secret, algorithm="HS256")
    if kind == "tampered":
        head, body, signature = text.split(".")
        text = f"{head}.{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{signature}"
    return text


TOKEN_KINDS = [
    "valid",
    "expired",
    "wrong_secret",
    "wrong_audience",
    "no_scope",
    "not_yet",
    "tampered",
]
text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=40)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, str], bool]:
    """(path, headers, query, built to pass)."""
    path = draw(st.sampled_from(["/a", "/f"]))
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    passes = False
    if path == "/a":
        choice = draw(
            st.sampled_from(["token", "key", "random_bearer", "random_key", "both", "none"])
        )
        if choice in ("token", "both"):
            kind = draw(st.sampled_from(TOKEN_KINDS))
            place = draw(st.sampled_from(["header", "cookie", "query"]))
            value = _token(draw(st.sampled_from(["alice", "bob"])), kind)
            if place == "header":
                headers["Authorization"] = f"Bearer {value}"
            elif place == "cookie":
                headers["Cookie"] = f"session={value}"
            else:
                query["access_token"] = value
            passes = kind == "valid"
        if choice in ("key", "both"):
            good = draw(st.booleans())
            headers["X-Api-Key"] = GOOD_KEY if good else draw(text)
            passes = passes or good
        if choice == "random_bearer":
            headers["Authorization"] = (
                "Bearer " + draw(text)
            ).rstrip()  # no trailing space: httpx refuses it
        if choice == "random_key":
            headers["X-Api-Key"] = draw(text)
    else:
        verdict = draw(st.sampled_from(["pass", "401", "403", "500", "none", "random"]))
        if verdict == "random":
            headers["X-Verdict"] = draw(text)
        elif verdict != "none":
            headers["X-Verdict"] = verdict
        passes = verdict == "pass"
    return path, headers, query, passes


async def _auth_service(req: RecordedRequest) -> Reply:
    verdict = req.headers.get("x-verdict")
    if verdict == "pass":
        return Reply(json={}, headers=[("X-User-Id", "u1")])
    if verdict in ("403", "500"):
        return Reply(status=int(verdict), body=b"no")
    return Reply(status=401, body=b"who?", headers=[("WWW-Authenticate", 'Basic realm="x"')])


async def _scenario(
    keys_file: str, batch: list[tuple[str, dict[str, str], dict[str, str], bool]]
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            seen: list[RecordedRequest] = []

            async def upstream(req: RecordedRequest) -> Reply:
                seen.append(req)
                return Reply(json={})

            api = await start_upstream(nursery, upstream)
            authsvc = await start_upstream(nursery, _auth_service)
            config = {
                "version": 1,
                "upstreams": {"api": {"url": api.url}, "authsvc": {"url": authsvc.url}},
                "auth": {
                    "users": {
                        "jwt": {
                            "secret": SECRET,
                            "algorithms": ["HS256"],
                            "issuer": "https://idp.test/",
                            "audience": ["orders-api"],
                            "token_from": [
                                "header.Authorization",
                                "cookie.session",
                                "query.access_token",
                            ],
                        },
                        "require": {"scopes": ["orders:read"]},
                    },
                    "partners": {"api_key": {"keys_file": keys_file}},
                    "sso": {
                        "forward": {
                            "upstream": "authsvc",
                            "path": "/verify",
                            "copy_request_headers": ["X-Verdict"],
                        }
                    },
                },
                "endpoints": [
                    {
                        "path": "/a",
                        "auth": ["users", "partners"],
                        "backends": [{"name": "a", "upstream": "api", "path": "/a"}],
                    },
                    {
                        "path": "/f",
                        "auth": "sso",
                        "backends": [{"name": "f", "upstream": "api", "path": "/f"}],
                    },
                ],
            }
            gw = await start_gateway(nursery, config)
            for path, headers, query, passes in batch:
                before = len(seen)
                response = await gw.get(path, headers=headers, params=query)
                if response.status_code in (401, 403, 503):
                    assert len(seen) == before, (path, headers, query, response.status_code)
                else:
                    assert response.status_code == 200
                    assert len(seen) == before + 1
                assert (response.status_code == 200) == passes, (path, headers, query)
            nursery.cancel_scope.cancel()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(requests(), min_size=1, max_size=12))
def test_no_refused_request_ever_reaches_an_upstream(
    tmp_path: Path, batch: list[tuple[str, dict[str, str], dict[str, str], bool]]
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"partner {hashlib.sha256(GOOD_KEY.encode()).hexdigest()}\n")
    trio.run(_scenario, str(keys), batch)
