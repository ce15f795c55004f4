"""The pure rules of authentication: finding credentials, judging them, and answering.

No I/O and no clock of its own: every function takes values and returns values, so each is
tested and fuzzed without sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import AuthError, InsufficientScope, Unauthorized
from .._rules.urls import parse_query
from .plan import ApiKeyPolicy, Requirement, TokenSource

RawHeaders = Sequence[tuple[bytes, bytes]]
Claims = Mapping[str, Any]

# RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class Identity:
    """Who a request was authenticated as.

    ``subject`` tells identities apart (for the aggregate cache key and coalescing); it is
    never a token or a key, only what they verified to (a digest where nothing else does).
    ``headers`` are added to every backend call of the request (forward auth's
    ``copy_response_headers``), and ``replaces`` (lower-case) names the fields they stand
    for: a client's own fields of those names never reach a backend, whether the auth
    service sent a value or not.
    """

    policy: str
    kind: str
    subject: str
    claims: Claims = field(default_factory=dict)
    key_name: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    replaces: frozenset[bytes] = frozenset()

    @property
    def partition(self) -> str:
        """A digest of the policy and subject: what the caches key on."""
        text = f"{self.policy}\x00{self.kind}\x00{self.subject}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


# --- credentials ---------------------------------------------------------------------


def header_values(headers: RawHeaders, name: bytes) -> list[bytes]:
    """Every line of a (lower-case) field, in order."""
    return [value for key, value in headers if key.lower() == name]


def bearer_token(value: bytes) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` value, or None for another scheme.
    The scheme is case-insensitive (RFC 9110 section 11.1). A malformed Bearer value gives
    ``b""``: there are credentials, and they are invalid."""
    scheme, _, rest = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = rest.strip(b" ")
    return token if _B64TOKEN.fullmatch(token) else b""


def cookie_value(headers: RawHeaders, name: str) -> bytes | None:
    """The value of cookie ``name`` (RFC 6265 section 5.4: ``name=value`` pairs separated
    by ``;``), the first one if repeated."""
    wanted = name.encode("latin-1")
    for line in header_values(headers, b"cookie"):
        for pair in line.split(b";"):
            key, eq, value = pair.strip().partition(b"=")
            if eq and key == wanted:
                return value.strip().strip(b'"')
    return None


class AmbiguousToken(Exception):
    """A token came more than one way (two places, or one header line twice)."""


def find_token(
    sources: Sequence[TokenSource], headers: RawHeaders, query_string: bytes
) -> str | None:
    """The token found in ``sources`` (None: no credentials at all). A value that cannot be
    a token (a malformed Bearer value, not ASCII) is returned as ``""``, which no verifier
    accepts.

    Raises:
        AmbiguousToken: tokens in more than one place, or a header holding more than one
            (RFC 6750 section 2: a client must not send a token more than one way; which
            one would count is a guess an attacker could steer).
    """
    tokens: list[bytes] = []
    for source in sources:
        if source.place == "header":
            lines = header_values(headers, source.name.encode("latin-1"))
            if source.bearer:
                # another scheme (Basic ...) is not a token of ours
                tokens += [t for t in map(bearer_token, lines) if t is not None]
            else:
                tokens += [line.strip() for line in lines]
        elif source.place == "cookie":
            found = cookie_value(headers, source.name)
            if found is not None:
                tokens.append(found)
        else:
            for pair in parse_query(query_string) if query_string else ():
                if pair.name == source.name:
                    tokens.append(
                        b"" if pair.malformed else pair.value.encode("utf-8", "surrogateescape")
                    )
    if not tokens:
        return None
    if len(tokens) > 1:
        raise AmbiguousToken
    try:
        return tokens[0].decode("ascii")
    except UnicodeDecodeError:
        return ""


def api_key_name(policy: ApiKeyPolicy, presented: bytes) -> str | None:
    """The name of the key ``presented`` is, or None. The SHA-256 digest of what was
    presented is compared with every stored digest in constant time
    (:func:`hmac.compare_digest`), and every one is compared, so the time taken tells
    nothing about which key (or how much of one) matched."""
    digest = hashlib.sha256(presented).hexdigest().encode("ascii")
    matched: str | None = None
    for name, stored in policy.digests:
        if hmac.compare_digest(digest, stored) and matched is None:
            matched = name
    return matched


# --- claims --------------------------------------------------------------------------


def claim_at(claims: Claims, path: Sequence[str | int]) -> Any:
    """The claim at a dot path, or None when a step is missing."""
    value: Any = claims
    for step in path:
        if isinstance(value, Mapping) and str(step) in value:
            value = value[str(step)]
        elif isinstance(value, list) and isinstance(step, int) and step < len(value):
            value = value[step]
        else:
            return None
    return value


def _as_words(value: Any) -> set[str]:
    """A list of strings, or a space-separated string, as a set of words."""
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()


def token_scopes(claims: Claims) -> set[str]:
    """The token's scopes: the space-separated ``scope`` claim (RFC 8693 section 4.2), or
    an ``scp`` list (as some providers write it)."""
    return _as_words(claims.get("scope")) | _as_words(claims.get("scp"))


def _holds(wanted: Sequence[str], have: set[str], match_all: bool) -> bool:
    if not wanted:
        return True
    return all(w in have for w in wanted) if match_all else any(w in have for w in wanted)


def unmet_requirement(requirement: Requirement, claims: Claims) -> str | None:
    """``roles`` or ``scopes`` when the claims do not meet that part of the requirement
    (roles first), else None. ``match`` applies within each list; both lists must hold."""
    roles = _as_words(claim_at(claims, requirement.roles_claim))
    if not _holds(requirement.roles, roles, requirement.match_all):
        return "roles"
    if not _holds(requirement.scopes, token_scopes(claims), requirement.match_all):
        return "scopes"
    return None


# --- answers (RFC 6750 section 3) ------------------------------------------------------


def _quoted(value: str) -> str:
    """A quoted-string (RFC 9110 section 5.6.4) of plain text."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bearer_challenge(error: str | None = None, scope: Sequence[str] = ()) -> str:
    """``Bearer`` alone when there were no credentials (RFC 6750 section 3.1: no error code
    then), else with ``error=``, and ``scope=`` for ``insufficient_scope`` (section 3)."""
    if error is None:
        return "Bearer"
    params = [f"error={_quoted(error)}"]
    if scope:
        params.append(f"scope={_quoted(' '.join(scope))}")
    return "Bearer " + ", ".join(params)


def api_key_challenge(header: str) -> str:
    """The challenge of an API key policy. There is no registered scheme for API keys; a
    401 must still carry a challenge (RFC 9110 section 15.5.2), so it names the header the
    key goes in: ``ApiKey header="X-Api-Key"``."""
    return f"ApiKey header={_quoted(header)}"


def insufficient(requirement: Requirement, reason: str) -> InsufficientScope:
    return InsufficientScope(
        f"the token does not carry the {reason} this endpoint requires",
        challenge=bearer_challenge("insufficient_scope", requirement.scopes),
        reason=reason,
    )


# Which refusal of several policies is answered (see :func:`most_specific`): a policy that
# could not decide first (it might have passed), then credentials that verified but were
# not enough, then credentials that did not verify, then none at all.
_RANK = {
    "auth_unavailable": 0,
    "insufficient_scope": 1,
    "missing_claim": 1,
    "forward_auth_refused": 2,
    "invalid_request": 3,  # credentials sent more than one way: as bad as invalid ones
    "invalid_token": 3,
    "unauthorized": 4,
}


def most_specific(refusals: Sequence[AuthError]) -> AuthError:
    """The refusal answered when every policy of an endpoint refused: the most specific
    (ranked as above), the first policy's among equals. When no policy found credentials,
    one 401 carries every policy's challenge (RFC 9110 section 11.6.1 allows several)."""
    assert refusals
    best = min(refusals, key=lambda r: _RANK.get(r.code, 4))
    if len(refusals) > 1 and all(isinstance(r, Unauthorized) for r in refusals):
        challenges = list(dict.fromkeys(r.challenge for r in refusals if r.challenge))
        return Unauthorized(best.message, challenge=", ".join(challenges), reason=best.reason)
    return best
