"""The gateway's one error hierarchy.

Configuration errors are raised only while a config is loaded; request errors are raised
while one client request is handled and each knows the HTTP status and the stable ``code``
that the JSON error body carries. A failing *backend* is not an exception: it becomes an
:class:`~gateway.Outcome` value and is reported per backend.

::

    GatewayError
    ├── ConfigError                   startup only: a list of ConfigProblem (file, path, message)
    ├── ListenError                   startup only: an address to listen on cannot be bound
    │                                 (busy port, bad address); one line, exit status 2
    ├── StoreUnavailable              the shared state store (Redis) failed or did not answer in
    │                                 time; the caller fails open or closed, caches are skipped
    ├── TokenRejected                 a bearer token (RFC 7519 JWT) failed validation; .reason is
    │                                 a stable word for the access log (``expired``...); the
    │                                 request layer answers 401 with ``WWW-Authenticate: Bearer
    │                                 error="invalid_token"`` (RFC 6750 section 3). Never
    │                                 carries the token.
    ├── JwksError                     a JWK Set document (RFC 7517 section 5) has no usable key
    │                                 or is not a key set; a refresh keeps the previous keys
    └── RequestError                  one client request; .status, .code, .message, .fields
        ├── NotFound                  404 not_found: no endpoint has this path
        ├── MethodNotAllowed          405 method_not_allowed: the path exists, the method does not
        ├── NotAcceptable             406 not_acceptable: Accept-Encoding refuses identity and
        │                             every coding the endpoint compresses with
        ├── InvalidPathParameter      400 invalid_path_parameter: unsafe or malformed {param} value,
        │                             or one a body template converts ({id:int}) that does not
        ├── InvalidQueryParameter     400 invalid_query_parameter: a query parameter the config
        │                             reads ({query.NAME}, forward_query) is missing, unsafe,
        │                             malformed or does not convert
        ├── InvalidHeader             400 invalid_header: a header field a {header.NAME}
        │                             template reads is missing, unsafe or does not convert
        ├── InvalidRequestBody        400 invalid_request_body: the body is not JSON, has a name
        │                             twice in one object or an integer beyond 64 bits; a
        │                             backend sends the client's body (``body:``) and the
        │                             request has none, or lacks the part; a {body.PATH} value
        │                             is missing, unsafe or does not convert (.fields["path"]:
        │                             its JSONPath, none when there is no body)
        ├── SchemaViolation           400 schema_violation: the JSON body or the query fails the
        │                             endpoint's request_schema or query_schema; .fields name
        │                             ``in`` (body, query), the JSONPath ``path`` of the failing
        │                             value, the schema ``keyword`` (and the query ``parameter``)
        ├── InvalidRequest            400 invalid_request: another malformed part of the request
        ├── AuthError                 the endpoint's auth policies refused the request; carries
        │   │                         the WWW-Authenticate challenge (RFC 6750 section 3)
        │   ├── AmbiguousCredentials  400 invalid_request: a token or key sent more than one way
        │   ├── Unauthorized          401 unauthorized: no credentials (bare ``Bearer`` challenge)
        │   ├── InvalidToken          401 invalid_token: a token or API key that does not verify
        │   ├── InsufficientScope     403 insufficient_scope: verified, but roles or scopes unmet
        │   ├── MissingClaim          403 missing_claim: a claim a backend template reads is
        │   │                         absent from the verified token, or not a string or number
        │   ├── ForwardAuthRefused    401/403 forward_auth_refused: the auth service's own
        │   │                         answer, passed to the client as it came
        │   └── AuthUnavailable       503 auth_unavailable: the auth service failed, timed out or
        │                             answered something other than 2xx, 401 or 403
        ├── AdminForbidden            403 admin_forbidden: a private admin route, peer outside
        │                             server.admin_allow
        ├── CorsPreflightRefused      403 cors_preflight_refused: a CORS preflight from an origin,
        │                             for a method or with request headers the endpoint's cors
        │                             does not allow; .fields["refused"] says which
        ├── WebSocketNotAccepted      400 websocket_not_accepted: a WebSocket upgrade to an
        │                             endpoint without ``websocket`` (RFC 6455 section 4.2.2)
        ├── WebSocketOriginRefused    403 websocket_origin_refused: an upgrade whose Origin the
        │                             endpoint's websocket.allow_origins does not list
        ├── RequestTimeout            408 request_timeout: the body took longer than body_timeout
        ├── RequestBodyTooLarge       413 request_body_too_large
        ├── UrlTooLong                414 url_too_long: path and query over max_url_length
        ├── TooManyRequests           429 rate_limited: over an endpoint's rate_limit
        ├── HeadersTooLarge           431 headers_too_large: request head over max_header_size
        ├── RateLimitUnavailable      503 rate_limit_unavailable: the store failed, on_error closed
        └── TooManyWebSockets         503 too_many_websockets: the endpoint's websocket
                                      max_connections are open in this worker
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file.

    Args:
        file: the config file's path as given by the user.
        path: where inside the document, e.g. ``endpoints[0].backends[1].upstream``;
            empty for the whole document.
        message: what is wrong, in words a user can act on.
    """

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ListenError(GatewayError):
    """An address the gateway was told to listen on cannot be bound (startup only)."""

    def __init__(self, bind: str, reason: str) -> None:
        super().__init__(f"gateway: cannot listen on {bind}: {reason}")
        self.bind = bind
        self.reason = reason


class ConfigError(GatewayError):
    """The config cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreUnavailable(GatewayError):
    """The state store behind rate limits and caches failed: a timeout, a refused or lost
    connection, or an error reply. Never a client's fault and not an HTTP response by itself:
    the caller decides whether a rate limit fails open or closed, and skips the cache. The
    original error, if any, is the ``__cause__``."""


TokenRejectReason = Literal[
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_issuer",
    "bad_audience",
    "bad_signature",
    "algorithm_not_allowed",
    "unknown_key",
    "no_keys",
]


class TokenRejected(GatewayError):
    """A bearer token failed validation (``gateway._auth.jwt.verify``).

    Args:
        reason: a short stable machine word, one of :data:`TokenRejectReason`: what the
            access log and metrics record.
        message: what is wrong, for the log. It never contains the token or any part of it
            (RFC 6750 section 5.3: bearer tokens are credentials); callers must not add it.
    """

    def __init__(self, reason: TokenRejectReason, message: str) -> None:
        self.reason: TokenRejectReason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class JwksError(GatewayError):
    """A JWK Set document cannot be used: not JSON, not an object with a ``keys`` array
    (RFC 7517 section 5), or not one key in it the gateway can verify signatures with.
    ``source`` names where it came from (a URL or a file), never its content."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


class RequestError(GatewayError):
    """A client request the gateway refuses; the response is ``status`` with a JSON body.

    Args:
        message: what is wrong, in words the client can act on (never echoing raw bytes).
        allow: for 405, the methods the path has (the ``Allow`` field).
        fields: more members of the JSON ``error`` object, such as ``{"parameter": "q",
            "in": "query"}`` naming the part of the request at fault (RFC 9110
            section 15.5.1: the client can correct it and repeat).
    """

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        allow: tuple[str, ...] = (),
        fields: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message
        self.allow = allow
        self.fields: Mapping[str, str] = fields or {}
        super().__init__(message)


class NotFound(RequestError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"


class NotAcceptable(RequestError):
    """The request's Accept-Encoding excludes identity (``identity;q=0``, or ``*;q=0``
    without ``identity``) and accepts none of the codings the endpoint compresses with:
    no answer could be sent that the client accepts (RFC 9110 sections 12.5.3, 15.5.7).
    Decided before authentication, rate limits and any upstream call."""

    status = 406
    code = "not_acceptable"


class InvalidPathParameter(RequestError):
    status = 400
    code = "invalid_path_parameter"


class InvalidQueryParameter(RequestError):
    """A query parameter a ``{query.NAME}`` template or ``forward_query`` reads is missing
    (templates only), unsafe in a URL (empty, ``.``, ``..``, a ``/`` or a control character)
    or malformed (a ``%`` not followed by two hex digits). ``fields`` name it."""

    status = 400
    code = "invalid_query_parameter"


class InvalidHeader(RequestError):
    """A header field a ``{header.NAME}`` template reads is missing or unsafe where it is
    used. ``fields`` name it."""

    status = 400
    code = "invalid_header"


class InvalidRequestBody(RequestError):
    """The request body is not valid JSON, or has an object with a name twice or an integer
    beyond 64 bits (RFC 8259 section 4, RFC 7493 sections 2.2 and 2.3), or a backend sends
    the client's JSON body, or a part of it (``body:``), and the request has no body or
    lacks that part, or a ``{body.PATH}`` reference finds nothing there, or a value that
    does not convert or is unsafe where it goes. ``fields["path"]`` is the value's JSONPath
    (RFC 9535, ``$.items[0].sku``); there is none when the request has no body."""

    status = 400
    code = "invalid_request_body"


class SchemaViolation(RequestError):
    """The request's JSON body or query parameters fail the endpoint's ``request_schema``
    or ``query_schema`` (see :mod:`gateway._rules.validation`). ``fields``: ``in`` (``body``
    or ``query``), ``path`` (a JSONPath, RFC 9535, of the failing value: ``$.items[0].qty``),
    ``keyword`` (the schema keyword that failed: ``minimum``, ``required``...) and, for the
    query, ``parameter``. The message names the place, never the client's value."""

    status = 400
    code = "schema_violation"


class InvalidRequest(RequestError):
    status = 400
    code = "invalid_request"


class AuthError(RequestError):
    """An auth policy refused the request (see :mod:`gateway._auth`).

    Args:
        challenge: the ``WWW-Authenticate`` value answered with (RFC 9110 section 11.6.1:
            a 401 must carry one), or None.
        reason: a word for the access log (``missing``, ``expired``, ``bad_signature``,
            ``wrong_key``, ``roles``, ...); never a token or a key.
    """

    status = 401
    code = "unauthorized"

    def __init__(
        self,
        message: str,
        *,
        challenge: str | None = None,
        reason: str = "",
        fields: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, fields=fields)
        self.challenge = challenge
        self.reason = reason or self.code

    @property
    def response_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The header lines of the refusal: the challenge, if any."""
        if self.challenge is None:
            return ()
        return ((b"www-authenticate", self.challenge.encode("latin-1")),)


class AmbiguousCredentials(AuthError):
    """A token (or API key) came more than one way: in two places, or in a header line
    repeated (RFC 6750 sections 2 and 3.1: ``invalid_request``, 400)."""

    status = 400
    code = "invalid_request"


class Unauthorized(AuthError):
    """No credentials where the policy looks for them: RFC 6750 section 3.1 says such a
    challenge carries no error code."""

    status = 401
    code = "unauthorized"


class InvalidToken(AuthError):
    """Credentials that do not verify: malformed, expired, not yet valid, wrong issuer or
    audience, bad signature, an algorithm outside the allow-list, an unknown key or API key
    (RFC 6750 section 3.1, ``invalid_token``)."""

    status = 401
    code = "invalid_token"


class InsufficientScope(AuthError):
    """Verified credentials without the roles or scopes the policy requires (RFC 6750
    section 3.1, ``insufficient_scope``)."""

    status = 403
    code = "insufficient_scope"


class MissingClaim(AuthError):
    """A backend template reads a claim (``{jwt.org.id}``) the verified token does not
    carry, or one that is not a string or a number. The client cannot fix it by repeating
    the request with the same token: a 403, like an unmet scope."""

    status = 403
    code = "missing_claim"


class ForwardAuthRefused(AuthError):
    """The forward auth service answered 401 or 403: its status, ``WWW-Authenticate`` and
    body go to the client as they came (its own body, not the gateway's JSON)."""

    status = 401
    code = "forward_auth_refused"

    def __init__(self, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> None:
        super().__init__(f"the auth service answered {status}", reason=f"forward_{status}")
        self.status = status
        self.headers = headers
        self.body = body


class AuthUnavailable(AuthError):
    """The forward auth service could not decide: unreachable, too slow, a 5xx or another
    answer than 2xx, 401 and 403. Never a pass."""

    status = 503
    code = "auth_unavailable"


class AdminForbidden(RequestError):
    """A private admin route (config, upstreams, state, metrics) asked for by a peer outside
    ``server.admin_allow``."""

    status = 403
    code = "admin_forbidden"


class CorsPreflightRefused(RequestError):
    """A CORS preflight the endpoint's ``cors`` settings do not allow: the origin, the
    method or a request header; ``fields["refused"]`` is ``origin``, ``method`` or
    ``headers``. The answer carries no ``Access-Control-Allow-*`` field, so the browser
    does not send the actual request."""

    status = 403
    code = "cors_preflight_refused"


class RequestBodyTooLarge(RequestError):
    status = 413
    code = "request_body_too_large"


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"


class TooManyRequests(RequestError):
    status = 429
    code = "rate_limited"


class RateLimitUnavailable(RequestError):
    """The shared store could not decide a rate limit and ``state.on_error`` is closed."""

    status = 503
    code = "rate_limit_unavailable"


class UrlTooLong(RequestError):
    status = 414
    code = "url_too_long"


class HeadersTooLarge(RequestError):
    status = 431
    code = "headers_too_large"


class WebSocketNotAccepted(RequestError):
    """A WebSocket upgrade to an endpoint that does not relay WebSockets (no
    ``websocket``): refused with an HTTP answer, as RFC 6455 section 4.2.2 lets a server
    do, rather than served as a plain request the client did not ask for."""

    status = 400
    code = "websocket_not_accepted"


class WebSocketOriginRefused(RequestError):
    """A WebSocket upgrade whose ``Origin`` the endpoint's ``websocket.allow_origins`` does
    not allow (RFC 6455 section 10.2); the upstream is not called."""

    status = 403
    code = "websocket_origin_refused"


class TooManyWebSockets(RequestError):
    """An upgrade to an endpoint whose ``websocket.max_connections`` sockets are open in
    this worker; answered with ``Retry-After``, before any upstream call."""

    status = 503
    code = "too_many_websockets"
