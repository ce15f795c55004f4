"""The config schema of the ``auth:`` section: named policies that endpoints refer to.

Frozen, strict pydantic models like the rest of the schema (:mod:`.model`); every field's
docstring is its documentation in ``docs/config.md``. Cross-checks (exactly one kind per
policy, algorithms against the key source, the forward upstream, the keys file) are done
when the config is compiled (:mod:`.auth_compile`), where each problem gets its path.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from .types import Duration, Name, _Model

DEFAULT_LEEWAY_S = 30.0
DEFAULT_JWKS_REFRESH_S = 600.0
DEFAULT_TOKEN_FROM = ("header.Authorization",)
DEFAULT_API_KEY_HEADER = "X-Api-Key"


class JwtConfig(_Model):
    """Verify a JSON Web Token (RFC 7519) signed with a key of a JWKS (RFC 7517) or an
    HMAC secret. Exactly one of `jwks_url`, `jwks_file` and `secret`."""

    jwks_url: str | None = None
    """URL of the identity provider's key set, fetched over the gateway's own transport,
    refreshed every `refresh`; a token with an unknown `kid` refetches it (at most once per
    30s)."""

    jwks_file: str | None = None
    """A JWKS file (JSON), read at load and on every reload."""

    secret: str | None = None
    """An HMAC secret for `HS256`/`HS384`/`HS512` tokens; may use `${VAR}`. Never taken from
    a JWKS public key (the RS256-to-HS256 confusion)."""

    issuer: str | None = None
    """The `iss` claim a token must carry, exactly."""

    audience: list[str] | None = Field(default=None, min_length=1)
    """The token's `aud` must contain one of these."""

    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    """Signature algorithms accepted (an allow-list). `none` is refused at load; `HS*` only
    with `secret`, `RS*`, `PS*` and `ES*` only with a key set."""

    leeway: Duration = DEFAULT_LEEWAY_S
    """Clock skew allowed when checking `exp`, `nbf` and `iat`."""

    refresh: Duration = DEFAULT_JWKS_REFRESH_S
    """How often the key set is fetched again (`jwks_url`)."""

    token_from: list[str] = Field(default_factory=lambda: list(DEFAULT_TOKEN_FROM), min_length=1)
    """Where the token is looked for, in order: `header.NAME` (for `Authorization`, a
    `Bearer` token, RFC 6750 section 2.1; any other header holds the token itself),
    `cookie.NAME` or `query.NAME`."""


class ApiKeyConfig(_Model):
    """Static API keys, stored as SHA-256 digests; the key's name becomes the identity
    (`{apikey.name}`)."""

    header: str = DEFAULT_API_KEY_HEADER
    """The request header that carries the key."""

    keys_file: str
    """A file of `NAME SHA256-HEX` lines (`#` starts a comment); never plain keys. Read at
    load and on every reload; a bad line is a config problem with its line number."""


class ForwardAuthConfig(_Model):
    """Ask an auth service (like nginx `auth_request`): a GET to `upstream` + `path` with
    the listed request headers. A 2xx passes; a 401 or 403 goes to the client as it came;
    anything else, a failure or a timeout is 503 `auth_unavailable`, never a pass."""

    upstream: str
    """Name of an entry under `upstreams`: the auth service."""

    path: str = "/"
    """Path (and query) of the sub-request, appended to the upstream's base path."""

    copy_request_headers: list[str] = Field(default_factory=lambda: ["Authorization", "Cookie"])
    """Client request headers sent to the auth service; no others are."""

    copy_response_headers: list[str] = Field(default_factory=list)
    """Headers of the service's 2xx answer added to every backend call of the request."""

    timeout: Duration | None = None
    """Bounds the sub-request (default: the upstream's timeout)."""


class RequireConfig(_Model):
    """What a verified token must also carry. Roles and scopes must both hold; `match`
    applies within each list."""

    roles: list[str] = Field(default_factory=list)
    """Roles, read from the list (or space-separated string) at `roles_claim`."""

    roles_claim: str = "roles"
    """Dot path into the claims to the roles, like `realm_access.roles` (Keycloak)."""

    scopes: list[str] = Field(default_factory=list)
    """Scopes, read from the space-separated `scope` claim (RFC 8693 section 4.2; an
    `scp` list is read too)."""

    match: Literal["all", "any"] = "all"
    """`all`: every role (and every scope) listed; `any`: at least one of each list."""


class AuthPolicyConfig(_Model):
    """One named policy: exactly one of `jwt`, `api_key` and `forward`, and optionally
    what the verified identity must carry."""

    jwt: JwtConfig | None = None
    """Bearer tokens (JWT)."""

    api_key: ApiKeyConfig | None = None
    """Static API keys."""

    forward: ForwardAuthConfig | None = None
    """A sub-request to an auth service."""

    require: RequireConfig | None = None
    """Roles and scopes the token must carry (JWT policies only): 403 otherwise."""


def _some_policy(names: str | list[str] | None) -> str | list[str] | None:
    if isinstance(names, list) and not names:
        # `auth: []` reads like "no policy passes", but would require none at all
        raise ValueError(
            "an empty list would leave the endpoint open: name a policy, or write "
            "`auth: null` to opt out"
        )
    return names


AuthRef = Annotated[Name | list[Name] | None, AfterValidator(_some_policy)]
"""An endpoint's ``auth``: one policy name, several (any one may pass), or None (opts
out); never an empty list."""

AuthKind = Literal["jwt", "api_key", "forward"]
