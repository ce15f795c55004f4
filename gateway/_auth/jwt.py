"""Bearer-token validation core (pure, sans-I/O): a JWT (RFC 7519) in JWS compact form
(RFC 7515 section 7.1), checked as RFC 8725 (JWT BCP) asks.

Nothing here does I/O, sleeps or reads a clock: the caller passes ``now_s`` (seconds since
the Unix epoch, the unit of a NumericDate, RFC 7519 section 2, i.e. ``time.time()``) and a
:class:`KeyLookup` (a fixed :class:`StaticKeys`, or the refreshed
:class:`gateway._auth.jwks.KeySet`). Everything is fuzzable without sockets.

Interface::

    JwtSettings(issuer, audience, algorithms, leeway_s, require_exp=True)   one policy
    Key(kid, kty, algorithms, material); Key.hmac(secret, algorithms); Key.public(...)
    KeyLookup      protocol: .loaded -> bool; .lookup(kid, alg) -> Key | None
    StaticKeys(keys)                    a KeyLookup over a fixed set (a secret, a jwks_file)
    VerifiedCache(max_entries)          memo of verified signatures, one per policy
    verify(token, keys, settings, now_s, cache=None) -> dict[str, Any]   the claims
        raises TokenRejected(reason, message); reason is one of
        malformed | algorithm_not_allowed | no_keys | unknown_key | bad_signature |
        expired | not_yet_valid | bad_issuer | bad_audience

Order of checks in :func:`verify` (the first failure is the reason):

1. size and shape: three base64url segments, a JSON-object header (``malformed``);
2. header ``alg`` in the policy's allow-list, never ``none`` (``algorithm_not_allowed``,
   RFC 8725 sections 2.1 and 3.1);
3. a key set has loaded (``no_keys``), the ``kid`` names a key (``unknown_key``);
4. the key may be used with ``alg``: its family (``kty``, and ``alg`` if the JWK had one) is
   the algorithm's (``algorithm_not_allowed``). An HMAC key is only ever made from a
   configured secret (:meth:`Key.hmac`), never from a key set, so an ``HS256`` token
   "signed" with an RSA public key's bytes never meets a key it could verify against
   (RFC 8725 section 2.1, algorithm confusion);
5. the signature (``bad_signature``); only then is the payload decoded;
6. the claims (``malformed``, ``expired``, ``not_yet_valid``, ``bad_issuer``,
   ``bad_audience``), RFC 7519 section 4.1, with ``leeway_s`` on the times.

A :class:`VerifiedCache` hit skips steps 1 and 5 only: the allow-list, the key (still the
same key object in the lookup: a key removed from the key set revokes its cached tokens)
and every claim are checked again at each hit, with the hit's ``now_s`` and settings.

Cryptography: PyJWT's algorithm objects (``jwt.get_algorithm_by_name``) over
``cryptography``; the compact form and the claims are handled here so that every rule and
reason is ours. Measured with ``bench/jwt_cost.py`` (2026-11-29, 2-core shared machine,
one core, medians, calls interleaved), microseconds per token:

=====  ===========  ======  ==================  ==================
alg    first sight  cached  PyJWT jwt.decode    joserfc 1.8 decode
=====  ===========  ======  ==================  ==================
RS256  46           6       84                  59
ES256  110          7       137                 124
=====  ===========  ======  ==================  ==================

Both libraries spend most of their time beyond the signature (PyJWT's bare
``Algorithm.verify``: about 25 us RS256, 75 us ES256) in their own parsing and checks, which
we must do anyway for our reasons and the cache; so the primitive is all we take, and PyJWT
(the common choice, a small dependency) provides it. PyJWT's ``PyJWKClient`` is never used:
it fetches with blocking urllib.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import jwt as _pyjwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import Algorithm

from .._errors import TokenRejected, TokenRejectReason

__all__ = [
    "DEFAULT_VERIFIED_CACHE_ENTRIES",
    "MAX_TOKEN_CHARS",
    "SUPPORTED_ALGORITHMS",
    "JwtSettings",
    "Key",
    "KeyLookup",
    "StaticKeys",
    "TokenRejectReason",
    "TokenRejected",
    "VerifiedCache",
    "VerifiedCacheStatistics",
    "verify",
]

RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
# RFC 7518 section 3.4: each ES algorithm names its curve; a key serves only its own.
EC_ALGORITHM_BY_CURVE: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
SUPPORTED_ALGORITHMS: Final = (
    RSA_ALGORITHMS | HMAC_ALGORITHMS | frozenset(EC_ALGORITHM_BY_CURVE.values())
)
# RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_SECRET_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
# RFC 7518 section 3.3: RSA keys of 2048 bits or more.
RSA_MIN_KEY_BITS: Final = 2048
# Far above any real access token (a few hundred to two thousand characters) and below the
# 16 KiB request head: bounds the work an unauthenticated client can ask for.
MAX_TOKEN_CHARS: Final = 8192
DEFAULT_VERIFIED_CACHE_ENTRIES: Final = 10_000

_ALGORITHMS: Final[dict[str, Algorithm]] = {
    name: _pyjwt.get_algorithm_by_name(name) for name in SUPPORTED_ALGORITHMS
}
# Each part may be empty: an unsecured JWT's signature is (then refused for its alg).
_COMPACT: Final = re.compile(r"([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)")
_B64URL_VALUE: Final = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
# The last character of 4n+2 characters carries 4 unused bits, of 4n+3 characters 2.
_UNUSED_BITS_MASK: Final = {2: 0b1111, 3: 0b11}

KeyType = Literal["RSA", "EC", "oct"]
KeyMaterial = RSAPublicKey | EllipticCurvePublicKey | bytes


@dataclass(frozen=True)
class JwtSettings:
    """One policy's rules for a token's header and claims.

    Args:
        issuer: the exact ``iss`` required (RFC 7519 section 4.1.1, case-sensitive string
            comparison); None: not checked.
        audience: the token's ``aud`` (a string or an array of strings, RFC 7519 section
            4.1.3) must contain one of these; empty: not checked.
        algorithms: the allow-list of header ``alg`` values (RFC 8725 section 3.1), from
            :data:`SUPPORTED_ALGORITHMS`. ``none`` is refused here, in any spelling.
        leeway_s: seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.
        require_exp: a token without ``exp`` is ``malformed`` (RFC 8725 section 3.10:
            bearer tokens should be short-lived).

    Raises:
        ValueError: ``none`` or an unsupported algorithm, an empty allow-list, a negative
            or non-finite leeway, an empty audience string.
    """

    issuer: str | None
    audience: tuple[str, ...]
    algorithms: tuple[str, ...]
    leeway_s: float
    require_exp: bool = True

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError("algorithms: at least one algorithm is required")
        for alg in self.algorithms:
            if alg.lower() == "none":
                raise ValueError("algorithms: 'none' is never allowed (RFC 8725 section 3.1)")
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(
                    f"algorithms: {alg!r} is not supported; use {sorted(SUPPORTED_ALGORITHMS)}"
                )
        if not (math.isfinite(self.leeway_s) and self.leeway_s >= 0):
            raise ValueError("leeway_s: must be a finite number >= 0")
        if isinstance(self.audience, str) or isinstance(self.algorithms, str):
            # a bare string would be searched by substring
            raise ValueError("audience and algorithms: a tuple of strings, not a string")
        if any(not aud for aud in self.audience):
            raise ValueError("audience: an empty string matches nothing")


@dataclass(frozen=True, eq=False)
class Key:
    """A key that verifies signatures, and the algorithms it may verify.

    Compared by identity: the :class:`VerifiedCache` checks that a cached token's key is
    still the one the lookup returns. Build with :meth:`public` or :meth:`hmac`.

    Args:
        kid: the JWK's ``kid`` (RFC 7517 section 4.5), or None.
        kty: ``RSA``, ``EC`` or ``oct`` (RFC 7518 section 6.1).
        algorithms: the ``alg`` values this key may verify; a subset of its family's.
        material: the public key, or the secret's bytes for ``oct``.

    Raises:
        ValueError: the material is not of the ``kty``, or ``algorithms`` is empty or
            names an algorithm of another family.
    """

    kid: str | None
    kty: KeyType
    algorithms: frozenset[str]
    material: KeyMaterial = field(repr=False)

    def __post_init__(self) -> None:
        family = _family_algorithms(self.kty, self.material)
        if not self.algorithms or not self.algorithms <= family:
            raise ValueError(
                f"a {self.kty} key verifies only {sorted(family)}, not {sorted(self.algorithms)}"
            )

    @classmethod
    def public(
        cls, material: RSAPublicKey | EllipticCurvePublicKey, kid: str | None, alg: str | None
    ) -> Key:
        """An RSA or EC public key; ``alg`` (the JWK's, RFC 7517 section 4.4) narrows it to
        one algorithm.

        Raises:
            ValueError: an RSA key under 2048 bits, an unsupported curve, an ``alg`` of
                another family.
        """
        kty: KeyType = "RSA" if isinstance(material, RSAPublicKey) else "EC"
        family = _family_algorithms(kty, material)
        algorithms = family if alg is None else frozenset({alg})
        return cls(kid, kty, algorithms, material)

    @classmethod
    def hmac(cls, secret: bytes, algorithms: Iterable[str], kid: str | None = None) -> Key:
        """A shared secret for HS256/384/512: only ever from configuration, never from a
        key set (RFC 8725 section 2.1).

        Raises:
            ValueError: a non-HMAC algorithm, or a secret shorter than the hash output
                (RFC 7518 section 3.2: 32 bytes for HS256, 48 for HS384, 64 for HS512).
        """
        algs = frozenset(algorithms)
        for alg in algs & HMAC_ALGORITHMS:
            if len(secret) < HMAC_MIN_SECRET_BYTES[alg]:
                raise ValueError(
                    f"an {alg} secret needs at least {HMAC_MIN_SECRET_BYTES[alg]} bytes"
                    " (RFC 7518 section 3.2)"
                )
        return cls(kid, "oct", algs, bytes(secret))


def _family_algorithms(kty: KeyType, material: KeyMaterial) -> frozenset[str]:
    if kty == "RSA" and isinstance(material, RSAPublicKey):
        if material.key_size < RSA_MIN_KEY_BITS:
            raise ValueError(f"RSA keys need {RSA_MIN_KEY_BITS} bits (RFC 7518 section 3.3)")
        return RSA_ALGORITHMS
    if kty == "EC" and isinstance(material, EllipticCurvePublicKey):
        alg = EC_ALGORITHM_BY_CURVE.get(material.curve.name)
        if alg is None:
            raise ValueError(f"curve {material.curve.name} is not supported")
        return frozenset({alg})
    if kty == "oct" and isinstance(material, bytes):
        return HMAC_ALGORITHMS
    raise ValueError(f"key material of type {type(material).__name__} is not a {kty} key")


class KeyLookup(Protocol):
    """Where :func:`verify` finds keys: a fixed set or a refreshed key set."""

    @property
    def loaded(self) -> bool:
        """False while no key set has loaded yet: every token is ``no_keys``."""
        ...

    def lookup(self, kid: str | None, alg: str) -> Key | None:
        """The key for a token's header ``kid`` and ``alg``, or None (``unknown_key``).

        A key of another family may be returned (``verify`` then refuses the token as
        ``algorithm_not_allowed``); None means no key has that ``kid``."""
        ...


class StaticKeys:
    """A :class:`KeyLookup` over a fixed set of keys (a configured secret, a parsed JWKS).

    ``lookup(kid, alg)``: the key with that ``kid`` (if several share it, RFC 7517 section
    4.5 allows it across key types, the one that serves ``alg``). Without a ``kid``: the one
    key that serves ``alg``, else the only key of the set, else None; a set of several keys
    therefore needs tokens with a ``kid``.
    """

    def __init__(self, keys: Iterable[Key]) -> None:
        self.keys: tuple[Key, ...] = tuple(keys)
        by_kid: dict[str, list[Key]] = {}
        for key in self.keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        self._by_kid = {kid: tuple(keys) for kid, keys in by_kid.items()}

    @property
    def loaded(self) -> bool:
        return True

    def kids(self) -> frozenset[str]:
        return frozenset(self._by_kid)

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, kid: str | None, alg: str) -> Key | None:
        if kid is not None:
            candidates = self._by_kid.get(kid, ())
        else:
            candidates = tuple(k for k in self.keys if alg in k.algorithms)
            if len(candidates) > 1:
                return None  # ambiguous: trying each would multiply the signature checks
            candidates = candidates or (self.keys if len(self.keys) == 1 else ())
        for key in candidates:
            if alg in key.algorithms:
                return key
        return candidates[0] if candidates else None


@dataclass(frozen=True)
class VerifiedCacheStatistics:
    entries: int
    max_entries: int
    hits: int
    misses: int
    evictions: int


@dataclass(frozen=True)
class _Verified:
    key: Key
    kid: str | None
    alg: str
    claims: dict[str, Any]
    expires_s: float  # exp + leeway at insertion: never served at or after it


class VerifiedCache:
    """Tokens whose signature was verified, so that the same token again skips the
    signature check (the costly part: see ``bench/jwt_cost.py``).

    Keyed by SHA-256 of the token: the cache never holds a token, only its digest and its
    claims. Bounded by ``max_entries`` (least recently used evicted first); an entry is
    never served at or after its token's ``exp`` plus the leeway, and tokens without
    ``exp`` are not cached. Memory: up to ``max_entries`` claim sets (a token is at most
    ``MAX_TOKEN_CHARS``; a typical one's claims take well under 1 KiB). Keep one cache per
    policy: a hit still re-checks the policy's
    allow-list, key and claims, but sharing would let one policy's tokens evict another's.
    ``max_entries=0`` disables it.

    Raises:
        ValueError: a negative ``max_entries``.
    """

    def __init__(self, max_entries: int = DEFAULT_VERIFIED_CACHE_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries: must be >= 0")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now_s: float) -> _Verified | None:
        entry = self._entries.get(digest)
        if entry is None or now_s >= entry.expires_s:
            if entry is not None:
                del self._entries[digest]
            self._misses += 1
            return None
        self._entries.move_to_end(digest)
        self._hits += 1
        return entry

    def put(self, digest: bytes, entry: _Verified, now_s: float) -> None:
        if self.max_entries == 0 or now_s >= entry.expires_s:
            return
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    def discard(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

    def purge(self, now_s: float) -> int:
        """Drop every entry past its expiry (O(entries)); returns how many."""
        stale = [d for d, e in self._entries.items() if now_s >= e.expires_s]
        for digest in stale:
            del self._entries[digest]
        return len(stale)

    def statistics(self) -> VerifiedCacheStatistics:
        return VerifiedCacheStatistics(
            len(self._entries), self.max_entries, self._hits, self._misses, self._evictions
        )


def verify(
    token: str,
    keys: KeyLookup,
    settings: JwtSettings,
    now_s: float,
    cache: VerifiedCache | None = None,
) -> dict[str, Any]:
    """Validate a bearer token and return its claims (RFC 7519 section 7.2).

    Args:
        token: the compact JWS, as the client sent it (without ``Bearer``).
        keys: where the verifying key comes from.
        settings: the policy.
        now_s: the current time, seconds since the Unix epoch (``time.time()``).
        cache: the policy's :class:`VerifiedCache`, or None.

    Returns:
        The claims: a new dict at each call (its values are shared with the cache: do not
        mutate nested values).

    Raises:
        TokenRejected: with the first failing check's reason (see the module docstring).
            Its message never contains the token or a value read from it.
    """
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    entry = cache.get(digest, now_s) if cache is not None else None
    if entry is not None:
        _check_algorithm(entry.alg, settings)
        if not keys.loaded:
            raise TokenRejected("no_keys", "no key set has loaded yet")
        if keys.lookup(entry.kid, entry.alg) is entry.key:
            _check_claims(entry.claims, settings, now_s)
            return dict(entry.claims)
        # The key set changed since: verify afresh, which gives the right reason.
        assert cache is not None
        cache.discard(digest)

    header_b64, payload_b64, signature = _split(token)
    header = _decode_json(header_b64, "header")
    alg, kid = _header_fields(header)
    _check_algorithm(alg, settings)
    if not keys.loaded:
        raise TokenRejected("no_keys", "no key set has loaded yet")
    key = keys.lookup(kid, alg)
    if key is None:
        raise TokenRejected("unknown_key", "no key has the token's kid")
    if alg not in key.algorithms:
        # RFC 8725 section 2.1: the header may not choose how a key is used.
        raise TokenRejected("algorithm_not_allowed", f"the key does not verify {alg}")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    try:
        valid = _ALGORITHMS[alg].verify(signing_input, key.material, signature)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise TokenRejected("bad_signature", "the signature does not verify")

    claims = _decode_json(payload_b64, "payload")
    _check_claims(claims, settings, now_s)
    exp = claims.get("exp")
    if cache is not None and exp is not None:
        cache.put(digest, _Verified(key, kid, alg, claims, exp + settings.leeway_s), now_s)
    return dict(claims)


def _split(token: str) -> tuple[str, str, bytes]:
    """RFC 7515 section 7.1: BASE64URL(header) '.' BASE64URL(payload) '.' BASE64URL(sig)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected("malformed", f"the token is longer than {MAX_TOKEN_CHARS} characters")
    if token.count(".") != 2:
        # Five parts would be a JWE (RFC 7516), which no policy accepts.
        raise TokenRejected("malformed", "not a JWS compact serialization of three parts")
    # RFC 7515 section 2: base64url without padding, and nothing else (the stdlib decoder
    # would skip foreign characters). One regular expression for the three parts.
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise TokenRejected("malformed", "a part is not base64url")
    header, payload, signature = match.groups()
    return header, payload, _b64url_decode(signature)


def _b64url_decode(segment: str) -> bytes:
    """Decode one part already matched by ``_COMPACT``."""
    tail = len(segment) % 4
    # A length of 4n+1 cannot be base64. RFC 4648 section 3.5: only the canonical spelling
    # (unused bits of the last character zero), so that one token has one spelling and a
    # flipped padding bit is not a second valid token.
    if tail == 1 or (tail and _B64URL_VALUE[segment[-1]] & _UNUSED_BITS_MASK[tail]):
        raise TokenRejected("malformed", "a part is not canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-tail % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - excluded by the checks above
        raise TokenRejected("malformed", "a part is not base64url") from None


def _decode_json(segment: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_b64url_decode(segment))
    except orjson.JSONDecodeError:
        # orjson keeps the last of duplicate members, as RFC 7519 section 4 permits.
        raise TokenRejected("malformed", f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenRejected("malformed", f"the {what} is not a JSON object")
    return value


def _header_fields(header: dict[str, Any]) -> tuple[str, str | None]:
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        raise TokenRejected("malformed", "the header has no alg")
    if kid is not None and not isinstance(kid, str):
        raise TokenRejected("malformed", "the header's kid is not a string")
    if "crit" in header:
        # RFC 7515 section 4.1.11: extensions we do not understand make the token invalid;
        # we understand none (this also refuses RFC 7797 unencoded payloads).
        raise TokenRejected("malformed", "the header has critical extensions")
    cty = header.get("cty")
    if isinstance(cty, str) and cty.upper() == "JWT":
        raise TokenRejected("malformed", "nested JWTs are not accepted (RFC 7519 section 5.2)")
    return alg, kid


def _check_algorithm(alg: str, settings: JwtSettings) -> None:
    # RFC 8725 sections 2.1 and 3.1: the allow-list decides, never the header; 'none' can
    # never be in it (JwtSettings refuses it).
    if alg not in settings.algorithms:
        shown = alg if alg in SUPPORTED_ALGORITHMS or alg.lower() == "none" else "this alg"
        raise TokenRejected("algorithm_not_allowed", f"{shown} is not allowed")


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # RFC 7519 section 2: NumericDate is a JSON number (a boolean is not one).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("malformed", f"{name} is not a NumericDate")
    return float(value)


def _check_claims(claims: dict[str, Any], settings: JwtSettings, now_s: float) -> None:
    """RFC 7519 section 4.1, with ``settings.leeway_s`` on each time (section 4.1.4)."""
    leeway_s = settings.leeway_s
    exp = _numeric_date(claims, "exp")
    if exp is None:
        if settings.require_exp:
            raise TokenRejected("malformed", "the token has no exp")
    elif now_s >= exp + leeway_s:  # 4.1.4: not accepted on or after exp
        raise TokenRejected("expired", "the token has expired")
    nbf = _numeric_date(claims, "nbf")
    if nbf is not None and now_s + leeway_s < nbf:  # 4.1.5: not accepted before nbf
        raise TokenRejected("not_yet_valid", "the token is not valid yet (nbf)")
    iat = _numeric_date(claims, "iat")
    if iat is not None and iat > now_s + leeway_s:
        # 4.1.6 sets no rule; a token issued in the future is a clock fault or a forgery.
        raise TokenRejected("not_yet_valid", "the token was issued in the future (iat)")
    if settings.issuer is not None and claims.get("iss") != settings.issuer:
        raise TokenRejected("bad_issuer", "the issuer is not the expected one")  # 4.1.1
    if settings.audience:
        aud = claims.get("aud")  # 4.1.3: a string, or an array of strings
        values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(v, str) and v in settings.audience for v in values):
            raise TokenRejected("bad_audience", "the token is not for this audience")
