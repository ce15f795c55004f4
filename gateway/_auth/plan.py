"""Compiled auth policies: immutable values built once at load (pure).

Secrets and key digests are kept out of ``repr`` so a plan printed in a log or a traceback
never shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from .._rules.urls import BaseUrl

TokenPlace = Literal["header", "cookie", "query"]


@dataclass(frozen=True)
class TokenSource:
    """One place a token is looked for. ``name`` is lower-case for a header; ``bearer``:
    the header is ``Authorization`` and holds ``Bearer TOKEN`` (RFC 6750 section 2.1)."""

    place: TokenPlace
    name: str
    bearer: bool = False


@dataclass(frozen=True)
class Requirement:
    """Roles (at ``roles_claim``, a dot path) and scopes (the ``scope`` claim) a verified
    token must carry; ``match_all``: every one listed, else at least one of each list."""

    roles: tuple[str, ...] = ()
    roles_claim: tuple[str, ...] = ("roles",)
    scopes: tuple[str, ...] = ()
    match_all: bool = True


@dataclass(frozen=True)
class JwtPolicy:
    name: str
    sources: tuple[TokenSource, ...]
    algorithms: tuple[str, ...]
    issuer: str | None
    audience: tuple[str, ...]
    leeway_s: float
    refresh_s: float
    secret: bytes | None = field(default=None, repr=False)
    jwks_url: str | None = None
    jwks_file: str | None = None
    jwks: bytes | None = field(default=None, repr=False)  # jwks_file's content, read at load
    require: Requirement | None = None
    kind: Literal["jwt"] = "jwt"


@dataclass(frozen=True)
class ApiKeyPolicy:
    """``digests``: (key name, SHA-256 of the key as lower-case hex, ASCII)."""

    name: str
    header: bytes  # lower-case
    digests: tuple[tuple[str, bytes], ...] = field(repr=False)
    header_text: str = ""  # the header's name as the config spells it (for the challenge)
    kind: Literal["api_key"] = "api_key"


@dataclass(frozen=True)
class ForwardPolicy:
    """``target``: the upstream's base path and the configured path; ``copy_request``
    lower-case names; ``copy_response`` lower-case names, in config order."""

    name: str
    upstream: str
    base: BaseUrl
    target: str
    copy_request: frozenset[bytes]
    copy_response: tuple[bytes, ...]
    timeout_s: float
    kind: Literal["forward"] = "forward"


AuthPolicy = JwtPolicy | ApiKeyPolicy | ForwardPolicy


@dataclass(frozen=True)
class EndpointAuth:
    """The policies of one endpoint, in the order they are tried; any one may pass."""

    policies: tuple[AuthPolicy, ...]

    @cached_property
    def has_jwt(self) -> bool:
        return any(p.kind == "jwt" for p in self.policies)

    @cached_property
    def has_api_key(self) -> bool:
        return any(p.kind == "api_key" for p in self.policies)

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.policies)
