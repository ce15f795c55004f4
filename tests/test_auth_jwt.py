"""The JWT core (gateway._auth.jwt): every rejection reason, the algorithm-confusion attack,
leeway, the verified-token cache, and a property test that a mutated token never passes.

Pure: no sockets, no trio run; the time is always passed as ``now_s``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._auth import jwt as core
from gateway._auth.jwt import (
    MAX_TOKEN_CHARS,
    JwtSettings,
    Key,
    StaticKeys,
    TokenRejected,
    VerifiedCache,
    verify,
)

NOW = 1_800_000_000.0
ISSUER = "https://issuer.example/"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = b"s" * 32

RSA_PUBLIC = Key.public(RSA_KEY.public_key(), "rsa-1", None)
EC_PUBLIC = Key.public(EC_KEY.public_key(), "ec-1", None)
KEYS = StaticKeys([RSA_PUBLIC, EC_PUBLIC])
POLICY = JwtSettings(
    issuer=ISSUER, audience=("orders-api",), algorithms=("RS256", "ES256"), leeway_s=30
)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "orders-api",
        "sub": "user-1",
        "iat": NOW - 10,
        "exp": NOW + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def rs256(
    payload: dict[str, Any] | None = None,
    kid: str | None = "rsa-1",
    algorithm: str = "RS256",
    headers: dict[str, Any] | None = None,
) -> str:
    headers = {**({"kid": kid} if kid is not None else {}), **(headers or {})}
    return pyjwt.encode(payload or claims(), RSA_KEY, algorithm=algorithm, headers=headers)


def es256(payload: dict[str, Any] | None = None, kid: str = "ec-1") -> str:
    return pyjwt.encode(payload or claims(), EC_KEY, algorithm="ES256", headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A token assembled by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def reason(token: str, keys: core.KeyLookup = KEYS, policy: JwtSettings = POLICY, **kw: Any) -> str:
    with pytest.raises(TokenRejected) as info:
        verify(token, keys, policy, kw.pop("now_s", NOW), **kw)
    assert token not in str(info.value) or not token
    return info.value.reason


# --- accepted ------------------------------------------------------------------------------


def test_valid_rs256_token_returns_its_claims() -> None:
    assert verify(rs256(), KEYS, POLICY, NOW) == claims()


def test_valid_es256_token_returns_its_claims() -> None:
    assert verify(es256(), KEYS, POLICY, NOW) == claims()


def test_hs256_token_verifies_with_the_configured_secret() -> None:
    policy = JwtSettings(ISSUER, ("orders-api",), ("HS256",), leeway_s=0)
    token = pyjwt.encode(claims(), SECRET, algorithm="HS256")
    assert verify(token, StaticKeys([Key.hmac(SECRET, ["HS256"])]), policy, NOW) == claims()


def test_aud_may_be_a_list_containing_one_accepted_audience() -> None:
    token = rs256(claims(aud=["billing", "orders-api"]))
    assert verify(token, KEYS, POLICY, NOW)["aud"] == ["billing", "orders-api"]


def test_a_single_key_set_accepts_tokens_without_kid() -> None:
    keys = StaticKeys([Key.public(RSA_KEY.public_key(), None, None)])
    assert verify(rs256(kid=None), keys, POLICY, NOW)["sub"] == "user-1"


# --- rejected, one reason each -------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d.e",
        "eyJhbGciOiJSUzI1NiJ9.e30.a b",
        "eyJhbGciOiJSUzI1NiJ9.e30.=",
        "x" * (MAX_TOKEN_CHARS + 1),
        f"{b64(b'not json')}.e30.AAAA",
        f"{b64(b'[1]')}.e30.AAAA",
        f"{b64(b'{}')}.e30.AAAA",  # no alg
        f"{b64(json.dumps({'alg': 'RS256', 'kid': 7}).encode())}.e30.AAAA",
    ],
    ids=[
        "empty",
        "one-part",
        "two-parts",
        "jwe-five-parts",
        "space",
        "padding",
        "too-long",
        "header-not-json",
        "header-not-object",
        "no-alg",
        "kid-not-string",
    ],
)
def test_malformed_tokens_are_malformed(token: str) -> None:
    assert reason(token) == "malformed"


def test_a_non_canonical_base64url_spelling_is_malformed() -> None:
    """RSA 2048 signatures are 342 characters: the last carries 4 unused bits, which the
    stdlib decoder ignores; a token has one spelling only."""
    head, _, signature = rs256().rpartition(".")
    assert len(signature) % 4 == 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) | 1]
    respelled = f"{head}.{signature[:-1]}{last}"
    assert base64.urlsafe_b64decode(respelled.rsplit(".", 1)[1] + "==") == base64.urlsafe_b64decode(
        signature + "=="
    )
    assert reason(respelled) == "malformed"


def test_critical_header_extensions_are_malformed() -> None:
    assert reason(rs256(headers={"crit": ["exp"], "exp": 1})) == "malformed"


def test_missing_exp_is_malformed_when_required() -> None:
    assert reason(rs256(claims(exp=None))) == "malformed"
    lax = JwtSettings(ISSUER, ("orders-api",), ("RS256",), leeway_s=0, require_exp=False)
    assert verify(rs256(claims(exp=None)), KEYS, lax, NOW)["sub"] == "user-1"


def test_non_numeric_exp_is_malformed() -> None:
    assert reason(rs256(claims(exp="tomorrow"))) == "malformed"
    assert reason(rs256(claims(exp=True))) == "malformed"


def test_expired_token_is_expired() -> None:
    assert reason(rs256(claims(exp=NOW - 31))) == "expired"


def test_leeway_accepts_a_token_expired_less_than_leeway_ago() -> None:
    assert verify(rs256(claims(exp=NOW - 29)), KEYS, POLICY, NOW)["sub"] == "user-1"
    # exactly at exp + leeway it is expired: RFC 7519 4.1.4 "on or after"
    assert reason(rs256(claims(exp=NOW - 30))) == "expired"


def test_nbf_in_the_future_is_not_yet_valid() -> None:
    assert reason(rs256(claims(nbf=NOW + 31))) == "not_yet_valid"
    assert verify(rs256(claims(nbf=NOW + 29)), KEYS, POLICY, NOW)["sub"] == "user-1"


def test_iat_in_the_future_is_not_yet_valid() -> None:
    assert reason(rs256(claims(iat=NOW + 60))) == "not_yet_valid"


def test_wrong_issuer_is_bad_issuer() -> None:
    assert reason(rs256(claims(iss="https://evil.example/"))) == "bad_issuer"
    assert reason(rs256(claims(iss=None))) == "bad_issuer"


def test_wrong_audience_is_bad_audience() -> None:
    assert reason(rs256(claims(aud="billing"))) == "bad_audience"
    assert reason(rs256(claims(aud=["billing", 7]))) == "bad_audience"
    assert reason(rs256(claims(aud=None))) == "bad_audience"


def test_tampered_payload_is_bad_signature() -> None:
    header, _, signature = rs256().split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    assert reason(f"{header}.{forged}.{signature}") == "bad_signature"


def test_token_signed_by_another_key_is_bad_signature() -> None:
    token = pyjwt.encode(claims(), OTHER_RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert reason(token) == "bad_signature"


def test_alg_none_is_never_allowed() -> None:
    token = hand_made({"alg": "none", "kid": "rsa-1"}, claims(), lambda _: b"")
    assert reason(token) == "algorithm_not_allowed"
    unsigned = token.rsplit(".", 1)[0] + "."
    assert reason(unsigned) == "algorithm_not_allowed"
    for spelling in ("none", "None", "NONE"):
        with pytest.raises(ValueError, match="never"):
            JwtSettings(None, (), (spelling, "RS256"), leeway_s=0)


def test_settings_refuse_what_would_be_checked_wrongly() -> None:
    for bad in (
        dict(algorithms=()),
        dict(algorithms=("RS1",)),
        dict(audience="orders-api"),  # a string would match by substring
        dict(audience=("",)),
        dict(leeway_s=-1),
        dict(leeway_s=float("inf")),
    ):
        fields: dict[str, Any] = dict(issuer=None, audience=(), algorithms=("RS256",), leeway_s=0)
        with pytest.raises(ValueError):
            JwtSettings(**{**fields, **bad})


def test_alg_outside_the_allow_list_is_algorithm_not_allowed() -> None:
    rs_only = JwtSettings(ISSUER, ("orders-api",), ("RS256",), leeway_s=0)
    assert reason(es256(), policy=rs_only) == "algorithm_not_allowed"
    assert reason(rs256(algorithm="RS512")) == "algorithm_not_allowed"


@pytest.mark.parametrize("kid", ["rsa-1", None])
@pytest.mark.parametrize("algorithms", [("RS256",), ("RS256", "HS256")])
def test_hs256_signed_with_the_rsa_public_key_as_secret_is_refused(
    kid: str | None, algorithms: tuple[str, ...]
) -> None:
    """RFC 8725 section 2.1: the classic RS256-to-HS256 confusion. The attacker knows the
    public key (it is published) and signs an HS256 token with its PEM or DER bytes."""
    rsa_only = StaticKeys([RSA_PUBLIC])
    policy = JwtSettings(ISSUER, ("orders-api",), algorithms, leeway_s=0)
    public = RSA_KEY.public_key()
    for secret in (
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ):
        header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
        token = hand_made(
            header, claims(sub="admin"), lambda m, s=secret: hmac.digest(s, m, "sha256")
        )
        assert reason(token, rsa_only, policy) in ("algorithm_not_allowed", "bad_signature")


def test_rs256_token_whose_kid_names_an_ec_key_is_algorithm_not_allowed() -> None:
    assert reason(rs256(kid="ec-1")) == "algorithm_not_allowed"


def test_a_jwk_alg_narrows_its_key_to_that_algorithm() -> None:
    keys = StaticKeys([Key.public(RSA_KEY.public_key(), "rsa-1", "RS256")])
    policy = JwtSettings(ISSUER, ("orders-api",), ("RS256", "PS256"), leeway_s=0)
    assert reason(rs256(algorithm="PS256"), keys, policy) == "algorithm_not_allowed"


def test_unknown_kid_is_unknown_key() -> None:
    assert reason(rs256(kid="made-up")) == "unknown_key"


def test_no_kid_with_several_fitting_keys_is_unknown_key() -> None:
    keys = StaticKeys([RSA_PUBLIC, Key.public(OTHER_RSA_KEY.public_key(), "rsa-2", None)])
    assert reason(rs256(kid=None), keys) == "unknown_key"


def test_no_key_set_loaded_is_no_keys() -> None:
    class NotLoaded:
        loaded = False

        def lookup(self, kid: str | None, alg: str) -> Key | None:
            raise AssertionError("never asked before a key set has loaded")

    assert reason(rs256(), NotLoaded()) == "no_keys"


def test_keys_refuse_weak_material() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Key.hmac(b"short", ["HS256"])
    with pytest.raises(ValueError, match="2048"):
        Key.public(
            rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), None, None
        )
    with pytest.raises(ValueError, match="verifies only"):
        Key("k", "RSA", frozenset({"HS256"}), RSA_KEY.public_key())
    with pytest.raises(ValueError, match="not a RSA key"):
        Key("k", "RSA", frozenset({"RS256"}), b"x" * 64)


# --- the verified-token cache --------------------------------------------------------------


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count calls of the signature primitive."""
    seen: list[str] = []
    for name, algorithm in list(core._ALGORITHMS.items()):

        class Counting:
            def __init__(self, inner: Any, name: str) -> None:
                self.inner, self.name = inner, name

            def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
                seen.append(self.name)
                return bool(self.inner.verify(msg, key, sig))

        monkeypatch.setitem(core._ALGORITHMS, name, Counting(algorithm, name))
    return seen


def test_second_verify_of_a_token_skips_the_signature_check(signature_checks: list[str]) -> None:
    cache = VerifiedCache(10)
    token = es256()
    first = verify(token, KEYS, POLICY, NOW, cache)
    second = verify(token, KEYS, POLICY, NOW + 1, cache)
    assert first == second == claims()
    assert signature_checks == ["ES256"]
    stats = cache.statistics()
    assert (stats.entries, stats.hits, stats.misses) == (1, 1, 1)


def test_cache_returns_a_copy_of_the_claims() -> None:
    cache = VerifiedCache(10)
    token = rs256()
    verify(token, KEYS, POLICY, NOW, cache)["sub"] = "admin"
    assert verify(token, KEYS, POLICY, NOW, cache)["sub"] == "user-1"


def test_cached_token_still_expires() -> None:
    cache = VerifiedCache(10)
    token = rs256(claims(exp=NOW + 60))
    verify(token, KEYS, POLICY, NOW, cache)
    assert reason(token, cache=cache, now_s=NOW + 60 + 30) == "expired"
    assert len(cache) == 0


def test_cached_token_rechecks_time_claims_at_each_hit() -> None:
    # nbf within the leeway is accepted on first sight; a later policy with no leeway
    # sharing the cache must still see it.
    cache = VerifiedCache(10)
    token = rs256(claims(nbf=NOW + 20))
    verify(token, KEYS, POLICY, NOW, cache)
    strict = JwtSettings(ISSUER, ("orders-api",), ("RS256",), leeway_s=0)
    assert reason(token, policy=strict, cache=cache) == "not_yet_valid"


def test_cache_hit_under_another_policy_rechecks_its_rules(signature_checks: list[str]) -> None:
    cache = VerifiedCache(10)
    token = rs256()
    verify(token, KEYS, POLICY, NOW, cache)
    other_aud = JwtSettings(ISSUER, ("billing",), ("RS256",), leeway_s=0)
    other_iss = JwtSettings("https://other/", ("orders-api",), ("RS256",), leeway_s=0)
    es_only = JwtSettings(ISSUER, ("orders-api",), ("ES256",), leeway_s=0)
    assert reason(token, policy=other_aud, cache=cache) == "bad_audience"
    assert reason(token, policy=other_iss, cache=cache) == "bad_issuer"
    assert reason(token, policy=es_only, cache=cache) == "algorithm_not_allowed"
    assert signature_checks == ["RS256"]


def test_cache_hit_needs_the_same_key_still_in_the_key_set() -> None:
    cache = VerifiedCache(10)
    token = rs256()
    verify(token, KEYS, POLICY, NOW, cache)
    assert reason(token, StaticKeys([EC_PUBLIC]), cache=cache) == "unknown_key"
    # a key set with another key under the same kid: the signature is checked afresh
    impostor = StaticKeys([Key.public(OTHER_RSA_KEY.public_key(), "rsa-1", None)])
    assert reason(token, impostor, cache=cache) == "bad_signature"


def test_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = VerifiedCache(2)
    a, b, c = (rs256(claims(sub=s)) for s in "abc")
    verify(a, KEYS, POLICY, NOW, cache)
    verify(b, KEYS, POLICY, NOW, cache)
    verify(a, KEYS, POLICY, NOW, cache)  # a is now the most recent
    verify(c, KEYS, POLICY, NOW, cache)  # evicts b
    assert len(cache) == 2
    digest = {t: hashlib.sha256(t.encode()).digest() for t in (a, b, c)}
    assert cache.get(digest[b], NOW) is None
    assert cache.get(digest[a], NOW) is not None and cache.get(digest[c], NOW) is not None
    assert cache.statistics().evictions == 1


def test_cache_keeps_no_entry_past_exp_plus_leeway() -> None:
    cache = VerifiedCache(10)
    short, long = rs256(claims(sub="s", exp=NOW + 10)), rs256(claims(sub="l", exp=NOW + 1000))
    verify(short, KEYS, POLICY, NOW, cache)
    verify(long, KEYS, POLICY, NOW, cache)
    assert cache.purge(NOW + 10 + 30) == 1
    assert len(cache) == 1


def test_tokens_without_exp_are_not_cached() -> None:
    lax = JwtSettings(ISSUER, ("orders-api",), ("RS256",), leeway_s=0, require_exp=False)
    cache = VerifiedCache(10)
    verify(rs256(claims(exp=None)), KEYS, lax, NOW, cache)
    assert len(cache) == 0


def test_cache_keys_by_digest_and_holds_no_token() -> None:
    cache = VerifiedCache(10)
    token = rs256()
    verify(token, KEYS, POLICY, NOW, cache)
    assert list(cache._entries) == [hashlib.sha256(token.encode()).digest()]


# --- properties ----------------------------------------------------------------------------

VALID_RS = rs256()
VALID_ES = es256()
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


@st.composite
def mutations(draw: st.DrawFn, token: str) -> str:
    chars = list(token)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "swap"]))
        i = draw(st.integers(0, len(chars) - 1))
        c = draw(st.sampled_from(B64_ALPHABET) | st.characters())
        if kind == "replace":
            chars[i] = c
        elif kind == "insert":
            chars.insert(i, c)
        elif kind == "delete" and len(chars) > 1:
            del chars[i]
        elif kind == "swap":
            j = draw(st.integers(0, len(chars) - 1))
            chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_mutated_token_is_always_rejected(data: st.DataObject) -> None:
    for token in (VALID_RS, VALID_ES):
        mutated = data.draw(mutations(token))
        if mutated == token:
            continue
        try:
            accepted = verify(mutated, KEYS, POLICY, NOW, VerifiedCache(4))
        except TokenRejected as exc:
            assert mutated not in exc.message
            continue
        # Unreachable for RS256 (one valid signature per message); for ES256 a second
        # valid signature could exist (ECDSA malleability) but never with other claims.
        assert token is VALID_ES and accepted == claims()


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
)
def test_arbitrary_text_is_only_ever_rejected(text: str) -> None:
    with pytest.raises(TokenRejected):
        verify(text, KEYS, POLICY, NOW)
