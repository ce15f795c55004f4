"""One JWT policy's verifier: the JWT core with the policy's keys, settings and cache.

A :class:`JwtVerifier` is what the request path calls: a token and the time in, the
verified claims out, or :class:`~gateway._errors.TokenRejected` with a one-word ``reason``
for the access log. Its keys are, by the policy's config:

- ``secret``: one HMAC key (HS256/384/512), the only place an HMAC key can come from
  (RFC 8725 section 3.1: a JWK Set's public key is never an HMAC secret);
- ``jwks_file``: the key set read at load;
- ``jwks_url``: a :class:`~.jwks.KeySet` the app keeps fresh in the background
  (:meth:`~.jwks.KeySet.run`); until its first fetch succeeds every token is refused
  (``no_keys``). A token naming a kid the set does not have waits, at most
  :data:`UNKNOWN_KID_WAIT_S`, for the refetch that kid asked for (at most one per
  ``min_refetch_interval_s``), so keys rotated by the identity provider work on their first
  token; a flood of made-up kids costs one fetch per interval and no waiting beyond it.

Verified tokens are cached per policy (:class:`~.jwt.VerifiedCache`): a token seen again
skips the signature check, never past its ``exp``.
"""

from __future__ import annotations

from typing import Any

from .._errors import TokenRejected
from . import jwt as core
from .jwks import KeySet, parse_jwks
from .plan import JwtPolicy

# How long a request whose token names an unknown kid waits for the refetch it triggered.
UNKNOWN_KID_WAIT_S = 2.0
# Verified tokens kept per policy (LRU beyond).
VERIFIED_CACHE_ENTRIES = 10_000

Claims = dict[str, Any]

__all__ = ["Claims", "JwtVerifier", "TokenRejected", "key_set_id"]


def key_set_id(policy: JwtPolicy) -> tuple[str, str, float] | None:
    """What identifies a policy's fetched key set across reloads (name, URL, refresh);
    None for a policy whose keys are not fetched."""
    if policy.jwks_url is None:
        return None
    return (policy.name, policy.jwks_url, policy.refresh_s)


class JwtVerifier:
    """Verifies the tokens of one policy (see the module docstring).

    Args:
        policy: the compiled policy.
        key_set: for a ``jwks_url`` policy, its key set (run by the app).

    Raises:
        ValueError: settings or keys the core refuses (the config check refuses them
            first).
    """

    def __init__(self, policy: JwtPolicy, key_set: KeySet | None = None) -> None:
        self.policy = policy
        self.settings = core.JwtSettings(
            issuer=policy.issuer,
            audience=tuple(policy.audience),
            algorithms=tuple(policy.algorithms),
            leeway_s=policy.leeway_s,
        )
        self.cache = core.VerifiedCache(VERIFIED_CACHE_ENTRIES)
        self.key_set = key_set
        self.keys: core.KeyLookup
        if policy.secret is not None:
            hmac = [a for a in policy.algorithms if a.startswith("HS")]
            self.keys = core.StaticKeys([core.Key.hmac(policy.secret, hmac)])
        elif policy.jwks is not None:
            self.keys = parse_jwks(policy.jwks, policy.jwks_file or policy.name)
        else:
            assert key_set is not None, "a jwks_url policy needs its key set"
            self.keys = key_set

    async def verify(self, token: str, now_s: float) -> Claims:
        """The token's claims once its signature, algorithm, issuer, audience and times
        hold at ``now_s`` (seconds since the epoch).

        Raises:
            TokenRejected: the token does not verify; ``reason`` says why.
        """
        try:
            return core.verify(token, self.keys, self.settings, now_s, self.cache)
        except TokenRejected as exc:
            if exc.reason != "unknown_key" or self.key_set is None:
                raise
        if not await self.key_set.wait_for_refetch(UNKNOWN_KID_WAIT_S):
            raise TokenRejected("unknown_key", "no key of the key set has this kid")
        return core.verify(token, self.keys, self.settings, now_s, self.cache)
