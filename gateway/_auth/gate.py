"""Running an endpoint's auth policies for one request (I/O edge: forward auth calls out).

Policies are tried in config order and the first that passes decides; the later ones are
not asked (a forward auth service is not called when a key already passed). When every
one refuses, the most specific refusal is answered (:func:`~.rules.most_specific`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._call.exchange import Sender
from .._errors import AmbiguousCredentials, AuthError, InvalidToken, TokenRejected, Unauthorized
from .forward import ask
from .plan import ApiKeyPolicy, AuthPolicy, EndpointAuth, JwtPolicy

if TYPE_CHECKING:  # the verifier brings in PyJWT and cryptography: only with JWT policies
    from .policy import JwtVerifier
from .rules import (
    AmbiguousToken,
    Identity,
    RawHeaders,
    api_key_challenge,
    api_key_name,
    bearer_challenge,
    find_token,
    header_values,
    insufficient,
    most_specific,
    unmet_requirement,
)


async def authenticate(
    auth: EndpointAuth,
    headers: RawHeaders,
    query_string: bytes,
    sender: Sender,
    authenticators: Mapping[str, JwtVerifier],
    now_s: float | None = None,
) -> Identity:
    """The identity of the first policy that passes.

    Raises:
        AuthError: every policy refused; the most specific refusal.
    """
    refusals: list[AuthError] = []
    for policy in auth.policies:
        try:
            return await _one(policy, headers, query_string, sender, authenticators, now_s)
        except AuthError as exc:
            refusals.append(exc)
    raise most_specific(refusals)


async def _one(
    policy: AuthPolicy,
    headers: RawHeaders,
    query_string: bytes,
    sender: Sender,
    authenticators: Mapping[str, JwtVerifier],
    now_s: float | None,
) -> Identity:
    if policy.kind == "forward":
        return await ask(policy, sender, headers)
    if policy.kind == "api_key":
        return check_api_key(policy, headers)
    return await check_jwt(
        policy,
        headers,
        query_string,
        authenticators[policy.name],
        time.time() if now_s is None else now_s,
    )


def check_api_key(policy: ApiKeyPolicy, headers: RawHeaders) -> Identity:
    """Raises:
    Unauthorized: no key in the policy's header.
    InvalidToken: a key that is not one of the policy's."""
    challenge = api_key_challenge(policy.header_text or policy.header.decode("latin-1"))
    lines = header_values(headers, policy.header)
    if not lines:
        raise Unauthorized("an API key is required", challenge=challenge, reason="missing")
    if len(lines) > 1:
        raise AmbiguousCredentials("send one API key", challenge=challenge, reason="ambiguous")
    name = api_key_name(policy, lines[0].strip())
    if name is None:
        raise InvalidToken("the API key is not valid", challenge=challenge, reason="wrong_key")
    return Identity(policy.name, "api_key", name, key_name=name)


async def check_jwt(
    policy: JwtPolicy,
    headers: RawHeaders,
    query_string: bytes,
    authenticator: JwtVerifier,
    now_s: float,
) -> Identity:
    """Raises:
    Unauthorized: no token where the policy looks (a bare ``Bearer`` challenge).
    InvalidToken: the token does not verify.
    InsufficientScope: it verified without the roles or scopes required."""
    try:
        token = find_token(policy.sources, headers, query_string)
    except AmbiguousToken:
        raise AmbiguousCredentials(
            "send one token, one way",
            challenge=bearer_challenge("invalid_request"),
            reason="ambiguous",
        ) from None
    if token is None:
        raise Unauthorized(
            "a bearer token is required", challenge=bearer_challenge(), reason="missing"
        )
    try:
        claims = await authenticator.verify(token, now_s)
    except TokenRejected as exc:
        raise InvalidToken(
            "the token is not valid", challenge=bearer_challenge("invalid_token"), reason=exc.reason
        ) from None
    if policy.require is not None:
        unmet = unmet_requirement(policy.require, claims)
        if unmet is not None:
            raise insufficient(policy.require, unmet)
    issuer = claims.get("iss")
    subject = claims.get("sub")
    if isinstance(subject, str):
        who = f"{issuer}\x00{subject}"
    else:
        # no subject to tell tokens apart: each token is an identity of its own
        who = "#" + hashlib.sha256(token.encode("ascii")).hexdigest()
    return Identity(policy.name, "jwt", who, claims=claims)
