"""CORS, the browser's cross-origin check, as the server's side of it (pure).

The rules are the Fetch standard's "CORS protocol" (https://fetch.spec.whatwg.org/,
section "CORS protocol", anchors ``#http-cors-protocol``, ``#http-requests``,
``#http-responses``, ``#cors-protocol-and-credentials``) and what a browser checks of the
answers ("CORS check" ``#cors-check`` and "CORS-preflight fetch" ``#cors-preflight-fetch``):

- A **preflight** is an ``OPTIONS`` request carrying ``Origin`` and
  ``Access-Control-Request-Method`` (and ``Access-Control-Request-Headers``, the request's
  non-safelisted header names, lower-case, comma-separated). The browser goes on with the
  actual request only if the answer has an ok status (2xx), an
  ``Access-Control-Allow-Origin`` equal to its origin (or ``*`` without credentials),
  ``Access-Control-Allow-Credentials: true`` when it sends credentials, and lists the
  method and every requested header in ``-Allow-Methods`` and ``-Allow-Headers``.
- An **actual request** carries ``Origin``; the browser hands the answer to the page only
  if ``Access-Control-Allow-Origin`` (and ``-Allow-Credentials`` with credentials) says so,
  and lets the page read only the response fields ``Access-Control-Expose-Headers`` names
  (besides the CORS-safelisted ones).
- With credentials, ``*`` is taken literally in ``-Allow-Origin``, ``-Allow-Headers``,
  ``-Allow-Methods`` and ``-Expose-Headers`` ("CORS protocol and credentials"): a
  credentialed answer names the origin, which this module always does, and echoes the
  requested header names rather than sending ``*``.
- An answer that depends on the request's ``Origin`` says ``Vary: Origin`` (RFC 9110
  section 12.5.5), so a shared cache never gives one origin's answer to another; a
  preflight answer depends on ``Access-Control-Request-Method`` and ``-Headers`` too.

The server enforces nothing for actual requests: a request from an origin not allowed is
served, without ``Access-Control-Allow-Origin``, and the browser withholds the answer from
the page. (Same-origin POSTs carry ``Origin`` too, so refusing them would break pages
served by the API's own origin.) Preflights, which exist only to ask, are answered with a
refusal instead.

Origins are compared as browsers serialise them (HTML standard, "ASCII serialization of an
origin"; RFC 6454 section 6.2): ``scheme://host[:port]``, lower-case scheme and host, no
default port, no path. The ``Origin`` a request carries is compared octet for octet with
the configured ones (normalised at load by :func:`parse_origin`), or full-matched against
configured patterns. An ``Origin`` longer than :data:`MAX_ORIGIN_LENGTH` never matches, so
a pattern never runs on a long attacker-chosen string.

Everything that does not depend on the request is computed once, in :class:`CorsPolicy`:
the request path does a dict lookup (or a regex match) and joins precomputed field lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

Fields = tuple[tuple[bytes, bytes], ...]

# A DNS name is at most 253 octets (RFC 1035 section 2.3.4); with a scheme and a port, a
# real origin is far below this.
MAX_ORIGIN_LENGTH = 512

# The response fields of the CORS protocol (Fetch, "HTTP responses"): an endpoint with
# CORS sets them, so an upstream's copies (passthrough) are dropped, and a config cannot
# set them through response_headers.
CORS_RESPONSE_FIELDS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)

ALLOW_ORIGIN = b"access-control-allow-origin"
VARY_ORIGIN: tuple[bytes, bytes] = (b"vary", b"Origin")
VARY_PREFLIGHT: tuple[bytes, bytes] = (
    b"vary",
    b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
)

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")  # RFC 3986 section 3.1
_HOST = re.compile(r"[a-z0-9._~\-]+|\[[0-9a-f:.]+\]")  # reg-name (ASCII) or IP literal
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Schemes a browser sends in Origin: a web page's, or an app's or extension's own pages'
# (a Capacitor or Ionic app on iOS, a browser extension, a Tauri app). ftp:, file:, ws:
# and the like never name a document's origin.
ORIGIN_SCHEMES = frozenset(
    {
        "http",
        "https",
        "capacitor",
        "ionic",
        "chrome-extension",
        "moz-extension",
        "safari-web-extension",
        "tauri",
    }
)


def parse_origin(text: str) -> str:
    """A configured origin in the form browsers send (lower-case scheme and host, no
    default port).

    Raises:
        ValueError: not an origin, with what it should be where that can be told.
    """
    if text == "null":
        raise ValueError(
            '"null" is the origin of sandboxed documents, file: pages and some redirects: '
            "any site can produce it, so allowing it allows everyone"
        )
    scheme, sep, rest = text.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme.lower()):
        raise ValueError(
            "an origin is scheme://host[:port], like https://app.example (or regex:... or *)"
        )
    scheme = scheme.lower()
    if scheme not in ORIGIN_SCHEMES:
        raise ValueError(
            f"browsers send no {scheme}:// origin: an origin is http:// or https://, like"
            " https://app.example (or an app's: capacitor://, chrome-extension://...)"
        )
    authority, _, after = _split_authority(rest)
    if "@" in authority:
        suggestion = f"{scheme}://{authority.rpartition('@')[2]}"
        raise ValueError(f"an origin has no user information: write {suggestion}")
    if after:
        base = f"{scheme}://{authority}"
        if after == "/":
            raise ValueError(f"an origin has no trailing slash: write {base}")
        what = {"/": "path", "?": "query", "#": "fragment"}[after[0]]
        raise ValueError(f"an origin has no {what}: write {base}")
    host, port = _split_port(authority)
    if "*" in host:
        raise ValueError(
            "* is not a wildcard inside an origin: use a pattern such as "
            r"regex:^https://[a-z0-9-]+\.example$"
        )
    if not host.isascii():
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_host = "xn--..."
        raise ValueError(
            f"browsers send a host in its ASCII form: write {scheme}://{ascii_host}"
            + (f":{port}" if port is not None else "")
        )
    host = host.lower()
    if not _HOST.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or an IP address")
    if port is not None and port == DEFAULT_PORTS.get(scheme):
        port = None  # browsers leave the scheme's default port out
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _split_authority(rest: str) -> tuple[str, str, str]:
    """``host[:port]`` and whatever follows it (a path, query or fragment)."""
    for index, char in enumerate(rest):
        if char in "/?#":
            return rest[:index], char, rest[index:]
    return rest, "", ""


def _split_port(authority: str) -> tuple[str, int | None]:
    host, sep, port = authority.rpartition(":")
    if not sep or host.endswith(":") or (authority.startswith("[") and not host.endswith("]")):
        # no port (an IPv6 literal without one has colons but ends with "]")
        return authority, None
    if not port.isdigit() or len(port) > 5 or int(port) > 65535:
        raise ValueError(f"{port!r} is not a port number")
    return host, int(port)


def parse_request_headers(value: str) -> list[str]:
    """``Access-Control-Request-Headers``: the names, lower-case, in order (Fetch, "HTTP
    requests": a comma-separated list of field names; empty members are skipped)."""
    return [name for name in (n.strip().lower() for n in value.split(",")) if name]


@dataclass(frozen=True)
class Allowed:
    """A preflight the policy allows: answer 204 with ``fields``."""

    fields: Fields


@dataclass(frozen=True)
class Refused:
    """A preflight the policy refuses: ``refused`` names the part at fault, ``message``
    says what (never the raw origin: the request's own octets are not echoed)."""

    refused: Literal["origin", "method", "headers"]
    message: str


@dataclass(frozen=True)
class CorsPolicy:
    """An endpoint's CORS settings, compiled (immutable).

    Args:
        origins: exact origins, serialised as browsers send them (:func:`parse_origin`).
        patterns: origins matched by ``fullmatch``.
        any_origin: every origin is allowed (``*``).
        methods: ``Access-Control-Allow-Methods``, as written (methods are case-sensitive,
            RFC 9110 section 9.1).
        headers: the request header names allowed (lower-case), or None for any requested
            one (echoed back).
        expose_headers: ``Access-Control-Expose-Headers``.
        credentials: ``Access-Control-Allow-Credentials: true``; the origin is then always
            echoed, never ``*``.
        max_age_s: ``Access-Control-Max-Age``, whole seconds; None leaves it out (the
            browser's default: 5 seconds).
    """

    origins: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()
    any_origin: bool = False
    methods: tuple[str, ...] = ()
    headers: tuple[str, ...] | None = ()
    expose_headers: tuple[str, ...] = ()
    credentials: bool = False
    max_age_s: int | None = None

    def __post_init__(self) -> None:
        # the field lines are encoded here, once, never on a request
        for name in ("static_fields", "_preflight_fields", "_allow_headers", "_allowed_headers"):
            getattr(self, name)

    @property
    def wildcard(self) -> bool:
        """Whether every answer says ``Access-Control-Allow-Origin: *``: any origin, no
        credentials. The fields are then the same for every request (see
        :attr:`static_fields`)."""
        return self.any_origin and not self.credentials

    @cached_property
    def static_fields(self) -> Fields:
        """The fields every answer of the endpoint carries, whatever the request: ``*``
        and the exposed names for a wildcard policy (sent even without ``Origin``: the
        answer is the same for everyone), else ``Vary: Origin``."""
        if self.wildcard:
            return ((ALLOW_ORIGIN, b"*"), *self._expose)
        return (VARY_ORIGIN,)

    @cached_property
    def _expose(self) -> Fields:
        if not self.expose_headers:
            return ()
        return ((b"access-control-expose-headers", ", ".join(self.expose_headers).encode()),)

    @cached_property
    def _credentials(self) -> Fields:
        return ((b"access-control-allow-credentials", b"true"),) if self.credentials else ()

    @cached_property
    def _preflight_fields(self) -> Fields:
        """A preflight answer's fields after ``-Allow-Origin`` and ``-Allow-Headers``."""
        fields = [*self._credentials, (b"access-control-allow-methods", self._methods)]
        if self.max_age_s is not None:
            fields.append((b"access-control-max-age", str(self.max_age_s).encode()))
        fields.append(VARY_PREFLIGHT)
        return tuple(fields)

    @cached_property
    def _methods(self) -> bytes:
        return ", ".join(self.methods).encode("ascii")

    @cached_property
    def _allow_headers(self) -> bytes:
        return ", ".join(self.headers or ()).encode("ascii")

    @cached_property
    def _allowed_headers(self) -> frozenset[str]:
        return frozenset(self.headers or ())

    def allows(self, origin: str) -> bool:
        """Whether ``origin`` (a request's ``Origin``, as sent) is allowed."""
        if self.any_origin:
            return True
        if origin in self.origins:
            return True
        if not self.patterns or len(origin) > MAX_ORIGIN_LENGTH:
            return False
        return any(pattern.fullmatch(origin) for pattern in self.patterns)


def response_fields(policy: CorsPolicy, origin: str) -> Fields:
    """The fields an actual request's answer gets for ``origin``, besides
    :attr:`CorsPolicy.static_fields`: ``-Allow-Origin`` (echoed), ``-Allow-Credentials``
    and ``-Expose-Headers`` when the origin is allowed; none when it is not (the browser
    then withholds the answer from the page) or when the policy is a wildcard (the static
    fields say it all)."""
    if policy.wildcard or not policy.allows(origin):
        return ()
    return ((ALLOW_ORIGIN, origin.encode("latin-1")), *policy._credentials, *policy._expose)


def preflight(
    policy: CorsPolicy, origin: str, request_method: str, request_headers: Sequence[str]
) -> Allowed | Refused:
    """The answer to a preflight from ``origin`` for ``request_method`` with
    ``request_headers`` (lower-case names, :func:`parse_request_headers`)."""
    if not policy.allows(origin):
        return Refused("origin", "this origin is not allowed to call the endpoint")
    if request_method not in policy.methods:
        return Refused(
            "method",
            f"method {request_method} is not allowed from other origins"
            if TOKEN.fullmatch(request_method)
            else "the requested method is not a valid method",
        )
    if policy.headers is None:
        bad = [name for name in request_headers if not TOKEN.fullmatch(name)]
        if bad:
            return Refused("headers", "a requested header name is not a valid field name")
        allow_headers = ",".join(dict.fromkeys(request_headers)).encode("ascii")
    else:
        refused = [name for name in request_headers if name not in policy._allowed_headers]
        if refused:
            named = [n for n in refused if TOKEN.fullmatch(n)]
            listed = ", ".join(dict.fromkeys(named)) or "a name that is not a valid field name"
            return Refused("headers", f"request headers not allowed: {listed}")
        allow_headers = policy._allow_headers
    allow_origin = b"*" if policy.wildcard else origin.encode("latin-1")
    fields: list[tuple[bytes, bytes]] = [(ALLOW_ORIGIN, allow_origin)]
    if allow_headers:
        fields.append((b"access-control-allow-headers", allow_headers))
    return Allowed((*fields, *policy._preflight_fields))


@dataclass(frozen=True)
class PreflightRequest:
    """What a preflight asks: from ``origin``, may ``method`` be sent with ``headers``."""

    origin: str
    method: str
    headers: tuple[str, ...]


def preflight_request(headers: Iterable[tuple[bytes, bytes]]) -> PreflightRequest | None:
    """The question of an ``OPTIONS`` request, or None if it is not a preflight (it lacks
    ``Origin`` or ``Access-Control-Request-Method``, or repeats one of them)."""
    origin: list[bytes] = []
    method: list[bytes] = []
    requested: list[bytes] = []
    for name, value in headers:  # ASGI names are lower-case
        if name == b"origin":
            origin.append(value)
        elif name == b"access-control-request-method":
            method.append(value)
        elif name == b"access-control-request-headers":
            requested.append(value)
    if len(origin) != 1 or len(method) != 1:
        return None
    names = parse_request_headers(b",".join(requested).decode("latin-1"))
    return PreflightRequest(origin[0].decode("latin-1"), method[0].decode("latin-1"), tuple(names))


def request_origin(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's ``Origin``, or None without one (or with more than one, which no
    browser sends: such a request gets no CORS fields)."""
    found: str | None = None
    for name, value in headers:  # ASGI names are lower-case
        if name == b"origin":
            if found is not None:
                return None
            found = value.decode("latin-1")
    return found
