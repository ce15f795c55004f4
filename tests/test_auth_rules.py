"""The pure auth rules, without sockets: where tokens are found, challenges, roles and
scopes, API key digests, times against an injected clock, which refusal is answered."""

from __future__ import annotations

import hashlib

import jwt as pyjwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway._auth.plan import ApiKeyPolicy, JwtPolicy, Requirement, TokenSource
from gateway._auth.policy import JwtVerifier, TokenRejected
from gateway._auth.rules import (
    AmbiguousToken,
    api_key_name,
    bearer_challenge,
    bearer_token,
    find_token,
    most_specific,
    unmet_requirement,
)
from gateway._errors import AuthUnavailable, InsufficientScope, InvalidToken, Unauthorized

HEADER = TokenSource("header", "authorization", bearer=True)
SECRET = b"an-hmac-secret-of-32-bytes-or-more!"


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (b"Bearer abc.def-_~+/=", b"abc.def-_~+/="),
        (b"bearer abc", b"abc"),  # the scheme is case-insensitive (RFC 9110 section 11.1)
        (b"BEARER   abc", b"abc"),
        (b"Basic abc", None),  # another scheme: no bearer credentials at all
        (b"Bearer", b""),  # malformed: credentials, invalid
        (b"Bearer a b", b""),
        (b"Bearer a,b", b""),
    ],
)
def test_bearer_tokens_follow_rfc_6750_section_2_1(value: bytes, token: bytes | None) -> None:
    assert bearer_token(value) == token


def test_a_token_is_found_in_any_configured_place_but_only_one() -> None:
    sources = (TokenSource("cookie", "session"), TokenSource("query", "t"), HEADER)
    cookie = (b"cookie", b"a=1; session=from-cookie")
    bearer = (b"authorization", b"Bearer h")
    assert find_token(sources, [cookie], b"") == "from-cookie"
    assert find_token(sources, [], b"t=from-query") == "from-query"
    assert find_token(sources, [bearer], b"") == "h"
    assert find_token(sources, [(b"authorization", b"Basic eA==")], b"t=q") == "q"
    assert find_token(sources, [], b"x=1") is None
    # RFC 6750 section 2: one token, one way
    for headers, query in (
        ([cookie, bearer], b""),
        ([bearer], b"t=from-query"),
        ([bearer, (b"authorization", b"Bearer other")], b""),
        ([], b"t=a&t=b"),
    ):
        with pytest.raises(AmbiguousToken):
            find_token(sources, headers, query)


@given(
    st.lists(st.tuples(st.sampled_from([b"authorization", b"cookie", b"x"]), st.binary())),
    st.binary(),
)
def test_finding_a_token_never_fails_on_any_octets(
    headers: list[tuple[bytes, bytes]], query: bytes
) -> None:
    sources = (HEADER, TokenSource("cookie", "s"), TokenSource("query", "t"))
    try:
        found = find_token(sources, headers, query)
    except AmbiguousToken:
        return
    assert found is None or found.isascii()


def test_challenges_follow_rfc_6750_section_3() -> None:
    assert bearer_challenge() == "Bearer"
    assert bearer_challenge("invalid_token") == 'Bearer error="invalid_token"'
    assert bearer_challenge("insufficient_scope", ["a:b", "c"]) == (
        'Bearer error="insufficient_scope", scope="a:b c"'
    )


@pytest.mark.parametrize(
    ("match_all", "claims", "unmet"),
    [
        (True, {"r": {"roles": ["admin", "dev"]}, "scope": "s1 s2"}, None),
        (True, {"r": {"roles": ["admin"]}, "scope": "s1 s2"}, "roles"),
        (True, {"r": {"roles": ["admin", "dev"]}, "scp": ["s1"]}, "scopes"),
        (False, {"r": {"roles": "dev"}, "scope": "s2"}, None),
        (False, {"r": {"roles": []}, "scope": "s2"}, "roles"),
        (False, {"r": {"roles": ["dev"]}}, "scopes"),
        (False, {"r": "not a mapping", "scope": "s1"}, "roles"),
    ],
)
def test_roles_and_scopes_must_both_hold(
    match_all: bool, claims: dict[str, object], unmet: str | None
) -> None:
    requirement = Requirement(("admin", "dev"), ("r", "roles"), ("s1", "s2"), match_all)
    assert unmet_requirement(requirement, claims) == unmet


def test_an_api_key_is_known_by_its_digest_only() -> None:
    def digest(key: str) -> bytes:
        return hashlib.sha256(key.encode()).hexdigest().encode()

    policy = ApiKeyPolicy("p", b"x-api-key", (("acme", digest("k1")), ("beta", digest("k2"))))
    assert api_key_name(policy, b"k2") == "beta"
    assert api_key_name(policy, b"k3") is None
    assert api_key_name(policy, digest("k1")) is None  # the stored digest is not a key


def _policy(**extra: object) -> JwtPolicy:
    settings: dict[str, object] = {
        "name": "u",
        "sources": (HEADER,),
        "algorithms": ("HS256",),
        "issuer": None,
        "audience": (),
        "leeway_s": 0.0,
        "refresh_s": 600.0,
        "secret": SECRET,
        **extra,
    }
    return JwtPolicy(**settings)  # type: ignore[arg-type]


async def test_a_token_naming_an_algorithm_outside_the_allow_list_is_refused() -> None:
    other = pyjwt.encode({"exp": 10}, SECRET * 2, algorithm="HS512")
    with pytest.raises(TokenRejected) as caught:
        await JwtVerifier(_policy()).verify(other, now_s=0)
    assert caught.value.reason == "algorithm_not_allowed"


async def test_a_valid_hmac_token_gives_its_claims() -> None:
    token = pyjwt.encode({"exp": 10, "sub": "a"}, SECRET, algorithm="HS256")
    assert (await JwtVerifier(_policy()).verify(token, now_s=5))["sub"] == "a"


def test_the_most_specific_refusal_is_answered_and_missing_ones_combine() -> None:
    missing_jwt = Unauthorized("m", challenge="Bearer")
    missing_key = Unauthorized("m", challenge='ApiKey header="X-Api-Key"')
    bad = InvalidToken("b", challenge='Bearer error="invalid_token"')
    scope = InsufficientScope("s", challenge='Bearer error="insufficient_scope"')
    down = AuthUnavailable("d")
    assert most_specific([missing_jwt, bad]) is bad
    assert most_specific([bad, scope]) is scope
    assert most_specific([scope, down]) is down
    assert most_specific([missing_jwt, missing_key]).challenge == (
        'Bearer, ApiKey header="X-Api-Key"'
    )
