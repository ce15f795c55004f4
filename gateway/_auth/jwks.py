"""JWK Sets (RFC 7517) for the JWT core: parsing (pure) and a refreshed key set whose I/O is
one injected ``fetch`` coroutine, so the caller picks the transport (the gateway's own).

Interface::

    parse_jwk(jwk) -> Key                                 raises ValueError (why it is unusable)
    parse_jwks(document, source) -> StaticKeys            raises JwksError
    load_jwks_file(path) -> StaticKeys                    raises JwksError; reads the file
    RefetchLimiter(min_interval_s)                        pure: .allow(now_s)
    KeySet(name, *, min_refetch_interval_s=30, fetch_timeout_s=5, clock=trio.current_time)
        a KeyLookup (.loaded, .lookup(kid, alg)) for ``jwt.verify``, and
        await nursery.start(key_set.run, fetch, refresh_s)   fetch: async () -> bytes
        await key_set.wait_for_refetch(timeout_s) -> bool
        key_set.statistics() -> KeySetStatistics

Keys the gateway cannot use are skipped and logged, never fatal: an unknown ``kty``, a key
for encryption (``use: enc``, or ``key_ops`` without ``verify``), a symmetric ``oct`` key
(an HMAC secret never comes from a key set: RFC 8725 section 2.1), a key with private
members (a published private key is a leak; using it would hide that), an RSA key under
2048 bits, a curve or ``alg`` the JWT core does not support. A document with no usable key
at all is a :class:`JwksError`, so a refresh never replaces good keys with none.

Refresh and unknown kids (``KeySet.run``): the first fetch is bounded by
``fetch_timeout_s`` and ``run`` reports started after it whether it worked or not (the
caller refuses tokens with ``no_keys`` and names the policy in readiness while
``loaded`` is False). Then it refetches every ``refresh_s``; a failed fetch keeps the
previous keys and is retried after ``min_refetch_interval_s`` (at most ``refresh_s``). A
token whose ``kid`` is not in the set asks for a refetch, which a :class:`RefetchLimiter`
grants at most once per ``min_refetch_interval_s`` (periodic fetches do not count, so a
key rotated just after one is found at once), so a flood of made-up kids costs at most one
fetch per interval. ``verify`` itself fails fast with
``unknown_key`` (it is pure and synchronous); a caller that wants a rotated key to work on
its first token awaits ``wait_for_refetch(timeout_s)``, which returns at once (False) when
no refetch is pending, and verifies again if it returns True. Rotation also arrives with
the periodic refresh.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import trio
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from .._errors import JwksError
from .jwt import Key, StaticKeys

__all__ = [
    "DEFAULT_FETCH_TIMEOUT_S",
    "DEFAULT_MIN_REFETCH_INTERVAL_S",
    "Fetch",
    "KeySet",
    "KeySetStatistics",
    "RefetchLimiter",
    "load_jwks_file",
    "parse_jwk",
    "parse_jwks",
]

log = logging.getLogger("gateway")

DEFAULT_MIN_REFETCH_INTERVAL_S: Final = 30.0
DEFAULT_FETCH_TIMEOUT_S: Final = 5.0
# RFC 7518 sections 6.3.2 and 6.2.2: members only a private key has.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
_MAX_LOGGED_KID_CHARS: Final = 64

Fetch = Callable[[], Awaitable[bytes]]
"""Returns the key set document's bytes; raises anything on failure (the caller's
transport, status check and deadline, if any; ``KeySet`` adds its own deadline)."""


def parse_jwk(jwk: object) -> Key:
    """One JWK (RFC 7517 section 4) as a verifying key.

    Raises:
        ValueError: why the gateway cannot use it (see the module docstring).
    """
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    kid, alg, use, key_ops = jwk.get("kid"), jwk.get("alg"), jwk.get("use"), jwk.get("key_ops")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string")
    if alg is not None and not isinstance(alg, str):
        raise ValueError("alg is not a string")
    if use is not None and use != "sig":  # section 4.2
        raise ValueError("use is not sig")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("key_ops does not include verify")  # section 4.3
    kty = jwk.get("kty")
    if kty == "oct":
        raise ValueError("a symmetric key is never taken from a key set (RFC 8725 section 2.1)")
    if kty not in ("RSA", "EC"):
        raise ValueError("kty is not RSA or EC")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise ValueError("it has private key members")
    try:
        material = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(jwk)
    except (InvalidKeyError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a valid {kty} public key ({type(exc).__name__})") from None
    if not isinstance(material, RSAPublicKey | EllipticCurvePublicKey):
        raise ValueError("it is not a public key")
    # Key checks that alg is of the material's family (RFC 8725 section 3.1).
    return Key.public(material, kid, alg)


def parse_jwks(document: bytes | str, source: str) -> StaticKeys:
    """A JWK Set document (RFC 7517 section 5) as keys by ``kid``; unusable keys are logged
    and skipped.

    Args:
        document: the JSON text.
        source: where it came from, for errors and logs (a URL, a file name, a policy).

    Raises:
        JwksError: not JSON, no ``keys`` array, or no usable key in it.
    """
    try:
        parsed: Any = orjson.loads(document)
    except orjson.JSONDecodeError:
        raise JwksError(source, "the key set is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list):
        raise JwksError(source, 'not a JWK Set: no "keys" array (RFC 7517 section 5)')
    keys: list[Key] = []
    for index, jwk in enumerate(parsed["keys"]):
        try:
            keys.append(parse_jwk(jwk))
        except ValueError as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            shown = str(kid)[:_MAX_LOGGED_KID_CHARS] if kid is not None else None
            log.warning("jwks %s: key %d (kid %r) skipped: %s", source, index, shown, exc)
    if not keys:
        raise JwksError(source, "the key set has no key the gateway can verify with")
    return StaticKeys(keys)


def load_jwks_file(path: str) -> StaticKeys:
    """Read and parse a JWK Set file (``jwks_file``); blocking, for startup and reload.

    Raises:
        JwksError: the file cannot be read, or :func:`parse_jwks` refuses it.
    """
    try:
        with open(path, "rb") as file:
            document = file.read()
    except OSError as exc:
        raise JwksError(path, f"cannot read the key set: {exc.strerror or exc}") from None
    return parse_jwks(document, path)


class RefetchLimiter:
    """At most one refetch per ``min_interval_s`` (pure, injected clock: ``now_s`` in any
    monotonic origin). Only granted refetches count: a key rotated just after a periodic
    fetch still gets its refetch, and a flood of made-up kids still costs one fetch per
    interval.

    Raises:
        ValueError: a negative or non-finite interval.
    """

    def __init__(self, min_interval_s: float) -> None:
        if not (math.isfinite(min_interval_s) and min_interval_s >= 0):
            raise ValueError("min_interval_s: must be a finite number >= 0")
        self.min_interval_s = min_interval_s
        self._last_fetch_s: float | None = None

    def allow(self, now_s: float) -> bool:
        """May an unknown kid cause a fetch now? Granting counts as the fetch."""
        if self._last_fetch_s is not None and now_s - self._last_fetch_s < self.min_interval_s:
            return False
        self._last_fetch_s = now_s
        return True


@dataclass(frozen=True)
class KeySetStatistics:
    loaded: bool
    keys: int
    fetches: int
    fetch_failures: int
    refetches: int  # granted to unknown kids
    refetches_limited: int  # unknown kids refused a refetch by the limiter


class KeySet:
    """A policy's current keys, replaced by :meth:`run`; a :class:`~.jwt.KeyLookup`.

    Args:
        name: the policy's name, for logs and readiness.
        min_refetch_interval_s: an unknown kid refetches at most this often.
        fetch_timeout_s: each fetch's deadline.
        clock: seconds, monotonic; trio's clock by default (``lookup`` then needs a trio
            run, which the request path has).

    Raises:
        ValueError: a negative or non-finite interval, a non-positive timeout.
    """

    def __init__(
        self,
        name: str,
        *,
        min_refetch_interval_s: float = DEFAULT_MIN_REFETCH_INTERVAL_S,
        fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not fetch_timeout_s > 0:
            raise ValueError("fetch_timeout_s: must be > 0")
        self.name = name
        self.min_refetch_interval_s = min_refetch_interval_s
        self.fetch_timeout_s = fetch_timeout_s
        self._limiter = RefetchLimiter(min_refetch_interval_s)
        self._clock = clock
        self._keys: StaticKeys | None = None
        self._refetch_wanted = trio.Event()  # the run loop waits on it between refreshes
        # The granted refetch not yet made: set when a fetch that began after the grant ends.
        self._refetch: trio.Event | None = None
        self._fetches = 0
        self._failures = 0
        self._refetches = 0
        self._refetches_limited = 0

    @property
    def loaded(self) -> bool:
        return self._keys is not None

    @property
    def keys(self) -> StaticKeys | None:
        """The current keys, or None before the first successful fetch."""
        return self._keys

    def lookup(self, kid: str | None, alg: str) -> Key | None:
        """:meth:`StaticKeys.lookup` on the current keys; an unknown ``kid`` asks the run
        loop for a refetch, if the limiter grants one."""
        if self._keys is None:
            return None
        key = self._keys.lookup(kid, alg)
        if key is None and kid is not None:
            self._want_refetch()
        return key

    def _want_refetch(self) -> None:
        if self._refetch is not None:
            return  # one is already coming: this kid waits for it too
        if not self._limiter.allow(self._clock()):
            self._refetches_limited += 1
            return
        self._refetches += 1
        self._refetch = trio.Event()
        self._refetch_wanted.set()

    async def wait_for_refetch(self, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, for a refetch an unknown kid asked for.

        Returns:
            True when a fetch ended meanwhile (verify again: the kid may be known now);
            False at once when no refetch is pending (the limiter refused one), or when the
            time ran out.
        """
        refetch = self._refetch
        if refetch is None:
            return False
        with trio.move_on_after(timeout_s):
            await refetch.wait()
            return True
        return False

    async def run(
        self,
        fetch: Fetch,
        refresh_s: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Fetch now, report started (loaded or not), then refresh every ``refresh_s`` and
        whenever an unknown kid was granted a refetch. Runs until cancelled.

        Raises:
            ValueError: a non-positive or non-finite ``refresh_s``.
        """
        if not (math.isfinite(refresh_s) and refresh_s > 0):
            raise ValueError("refresh_s: must be a finite number > 0")
        ok = await self._fetch(fetch)
        task_status.started()
        while True:
            # After a failure, retry sooner than a full refresh, but no more often than an
            # unknown kid could ask for: the key server is not hammered either way.
            wait_s = refresh_s if ok else min(refresh_s, self.min_refetch_interval_s)
            with trio.move_on_after(wait_s):
                await self._refetch_wanted.wait()
            self._refetch_wanted = trio.Event()
            ok = await self._fetch(fetch)

    async def _fetch(self, fetch: Fetch) -> bool:
        # A refetch granted while this fetch is under way is served by the next one: this
        # fetch's document may predate the kid that asked.
        serving = self._refetch
        self._fetches += 1
        try:
            with trio.fail_after(self.fetch_timeout_s):
                document = await fetch()
            keys = parse_jwks(document, self.name)
        except trio.TooSlowError:
            return self._failed(f"no answer within {self.fetch_timeout_s} s")
        except JwksError as exc:
            return self._failed(exc.message)
        except Exception as exc:  # the injected transport's errors: any failure keeps the keys
            return self._failed(f"{type(exc).__name__}: {exc}")
        finally:
            if serving is not None:
                self._refetch = None
                serving.set()
        self._keys = keys
        log.info("jwks %s: %d keys loaded", self.name, len(keys))
        return True

    def _failed(self, why: str) -> bool:
        self._failures += 1
        kept = "keeping the previous keys" if self.loaded else "no keys loaded yet"
        log.warning("jwks %s: fetch failed, %s: %s", self.name, kept, why)
        return False

    def statistics(self) -> KeySetStatistics:
        return KeySetStatistics(
            loaded=self.loaded,
            keys=len(self._keys) if self._keys is not None else 0,
            fetches=self._fetches,
            fetch_failures=self._failures,
            refetches=self._refetches,
            refetches_limited=self._refetches_limited,
        )
