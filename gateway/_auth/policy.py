"""The adapter between a JWT policy and the token verifier (pure: the clock is an argument).

The gateway calls a :class:`JwtAuthenticator`: a token and the time in, the verified claims
out, or :class:`TokenRejected` with a one-word ``reason`` for the access log. Which
verifier stands behind it is decided once per policy by :func:`authenticator_for`:

- the JWT core, :mod:`gateway._auth.jwt` (``verify(token, keys, settings, now_s)``, with
  its bounded cache of verified tokens), whenever that module is installed: it is imported
  lazily, here only;
- otherwise, for a policy with a ``secret``, :class:`HmacAuthenticator`: HS256/384/512
  checked with PyJWT;
- otherwise (a key set and no core to read it) every token is refused with ``no_keys``,
  as while a key set has not loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

import jwt as pyjwt

from .plan import JwtPolicy
from .rules import Claims


class TokenRejected(Exception):
    """A token that does not verify. ``reason``: ``malformed``, ``expired``,
    ``not_yet_valid``, ``bad_signature``, ``algorithm``, ``issuer``, ``audience``,
    ``unknown_key``, ``no_keys``, ``missing_exp``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwtAuthenticator(Protocol):
    """Verifies the tokens of one policy."""

    def verify(self, token: str, now_s: float) -> Claims:
        """The token's claims once its signature, algorithm, issuer, audience and times
        hold at ``now_s`` (seconds since the epoch).

        Raises:
            TokenRejected: the token does not verify; ``reason`` says why.
        """
        ...


KeySource = Callable[[], Any]
"""What the core's ``verify`` takes as ``keys`` for a policy: its secret, or the policy's
key set (``KeySet``) once the app holds one."""


def _core() -> ModuleType | None:
    try:
        return importlib.import_module("gateway._auth.jwt")
    except ModuleNotFoundError:
        return None


class CoreAuthenticator:
    """Calls the JWT core: ``verify(token, keys(), policy, now_s)``; the policy plan is the
    core's ``settings`` (algorithms, issuer, audience, leeway_s). The core's own
    ``TokenRejected`` becomes this module's, keeping its ``reason``."""

    def __init__(self, core: ModuleType, policy: JwtPolicy, keys: KeySource) -> None:
        self.core = core
        self.policy = policy
        self.keys = keys

    def verify(self, token: str, now_s: float) -> Claims:
        try:
            claims: Claims = self.core.verify(token, self.keys(), self.policy, now_s)
        except self.core.TokenRejected as exc:
            raise TokenRejected(str(getattr(exc, "reason", "malformed"))) from None
        return claims


class HmacAuthenticator:
    """HS256/384/512 tokens of a policy with a ``secret``, checked with PyJWT.

    The signature, algorithm (only the policy's ``HS*`` ones: a token naming another is
    refused before any key is used, so an RSA public key is never an HMAC secret),
    issuer and audience are PyJWT's checks; the times are checked here against ``now_s``
    with the policy's leeway (RFC 7519 sections 4.1.4 and 4.1.5), and a token without
    ``exp`` is refused: it would never expire.
    """

    def __init__(self, policy: JwtPolicy) -> None:
        assert policy.secret is not None
        self.policy = policy
        self.secret = policy.secret
        self.algorithms = [a for a in policy.algorithms if a.startswith("HS")]

    def verify(self, token: str, now_s: float) -> Claims:
        policy = self.policy
        try:
            claims: dict[str, Any] = pyjwt.decode(
                token,
                self.secret,
                algorithms=self.algorithms,
                issuer=policy.issuer,
                audience=list(policy.audience) or None,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": bool(policy.audience),
                    "verify_iss": policy.issuer is not None,
                },
            )
        except pyjwt.InvalidSignatureError:
            raise TokenRejected("bad_signature") from None
        except pyjwt.InvalidAlgorithmError:
            raise TokenRejected("algorithm") from None
        except pyjwt.InvalidIssuerError:
            raise TokenRejected("issuer") from None
        except pyjwt.InvalidAudienceError:
            raise TokenRejected("audience") from None
        except pyjwt.MissingRequiredClaimError as exc:
            raise TokenRejected(
                "issuer"
                if exc.claim == "iss"
                else "audience"
                if exc.claim == "aud"
                else "malformed"
            ) from None
        except pyjwt.InvalidTokenError:
            raise TokenRejected("malformed") from None
        check_times(claims, now_s, policy.leeway_s)
        return claims


def check_times(claims: Claims, now_s: float, leeway_s: float) -> None:
    """``exp`` (required) and ``nbf`` against ``now_s``, with ``leeway_s`` of clock skew
    (RFC 7519 sections 4.1.4 and 4.1.5).

    Raises:
        TokenRejected: ``missing_exp``, ``expired``, ``not_yet_valid`` or ``malformed``
            (a time that is not a number).
    """
    exp = claims.get("exp")
    if exp is None:
        raise TokenRejected("missing_exp")
    nbf = claims.get("nbf")
    for value in (exp, nbf):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TokenRejected("malformed")
    if now_s > exp + leeway_s:
        raise TokenRejected("expired")
    if nbf is not None and now_s < nbf - leeway_s:
        raise TokenRejected("not_yet_valid")


class NoKeys:
    """A key-set policy without a verifier that can read key sets: refuses every token."""

    def verify(self, token: str, now_s: float) -> Claims:
        raise TokenRejected("no_keys")


def authenticator_for(policy: JwtPolicy, keys: KeySource | None = None) -> JwtAuthenticator:
    """The verifier of one policy (see the module docstring)."""
    core = _core()
    if core is not None:
        return CoreAuthenticator(core, policy, keys or (lambda: policy.secret))
    if policy.secret is not None:
        return HmacAuthenticator(policy)
    return NoKeys()
