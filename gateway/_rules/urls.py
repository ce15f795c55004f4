"""Routes, path parameters and upstream URL templates (pure, no I/O).

A route matches the *raw* request path segment by segment, so a percent-encoded slash
stays inside its segment and is then refused as a parameter value (400), never re-routed.
A parameter value fills exactly one segment of an upstream path: it is percent-encoded
with nothing left safe (RFC 3986 section 2.1), so no value can add a segment, a query, a
fragment, or change the scheme, host or port, which come only from config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar
from urllib.parse import quote, unquote_to_bytes, urlencode, urlsplit

import httpx

from .._errors import InvalidPathParameter, MethodNotAllowed, NotFound

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 controls
_FORBIDDEN_IN_VALUE = ("/", "?", "#")
# characters a config author may write literally in a path template (RFC 3986 pchar,
# "/" and "?", plus "%" for pre-encoded octets); anything else is a config error.
_TEMPLATE_LITERAL = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$")


T = TypeVar("T")


class TemplateError(ValueError):
    """A route or URL template in the config is malformed."""


# --- routes -------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutePattern:
    """A parsed endpoint path: each segment is a literal or a ``{param}``."""

    text: str
    segments: tuple[str, ...]
    params: tuple[str | None, ...]  # per segment: the parameter name, or None for a literal

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p for p in self.params if p is not None)

    @property
    def literal_count(self) -> int:
        return sum(1 for p in self.params if p is None)


def parse_route(text: str) -> RoutePattern:
    """Parse an endpoint path like ``/api/users/{user_id}/dashboard``.

    Raises:
        TemplateError: not absolute, a parameter that is not a whole segment, a repeated
            parameter, or characters that are not allowed in a path.
    """
    if not text.startswith("/"):
        raise TemplateError("must start with '/'")
    if "?" in text or "#" in text:
        raise TemplateError("must not contain a query or fragment")
    segments = tuple(text[1:].split("/"))
    params: list[str | None] = []
    for seg in segments:
        whole = _WHOLE_PARAM.fullmatch(seg)
        if whole:
            name = whole.group(1)
            if name in params:
                raise TemplateError(f"parameter {{{name}}} appears twice")
            params.append(name)
            continue
        if "{" in seg or "}" in seg:
            raise TemplateError(f"segment {seg!r}: a parameter must fill a whole segment")
        if not _TEMPLATE_LITERAL.fullmatch(seg):
            raise TemplateError(f"segment {seg!r} has characters not allowed in a path")
        params.append(None)
    return RoutePattern(text, segments, tuple(params))


def decode_param(raw: str) -> str:
    """Percent-decode one raw path segment and check it is a safe parameter value.

    Raises:
        InvalidPathParameter: malformed encoding, not UTF-8, empty, ``.``/``..``, or
            containing ``/``, ``?``, ``#`` or a control character once decoded.
    """
    raw_bytes = raw.encode("latin-1", "replace")
    if _BAD_PERCENT.search(raw_bytes):
        raise InvalidPathParameter("malformed percent-encoding")
    try:
        value = unquote_to_bytes(raw_bytes).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPathParameter("not valid UTF-8 once decoded") from None
    check_param_value(value)
    return value


def check_param_value(value: str) -> None:
    """Refuse a decoded value that could change an upstream path's structure.

    Raises:
        InvalidPathParameter: empty, ``.``/``..``, or containing ``/``, ``?``, ``#`` or a
            control character.
    """
    if value in ("", ".", ".."):
        raise InvalidPathParameter("empty, '.' and '..' are not allowed")
    for char in _FORBIDDEN_IN_VALUE:
        if char in value:
            raise InvalidPathParameter(f"{char!r} is not allowed")
    if _CONTROL.search(value):
        raise InvalidPathParameter("control characters are not allowed")


@dataclass(frozen=True)
class RouteMatch(Generic[T]):
    target: T
    params: dict[str, str]


class Router(Generic[T]):
    """Finds the route for a raw path and method.

    Among the routes whose path matches, the one with the most literal segments that has
    the method wins (ties: config order); 405 only when no matching route has the method.
    """

    def __init__(self, routes: Iterable[tuple[RoutePattern, str, T]]) -> None:
        self._by_length: dict[int, list[tuple[RoutePattern, str, T]]] = {}
        for pattern, method, target in routes:
            self._by_length.setdefault(len(pattern.segments), []).append((pattern, method, target))
        for bucket in self._by_length.values():
            bucket.sort(key=lambda item: -item[0].literal_count)  # stable: config order

    def match(self, raw_path: str, method: str) -> RouteMatch[T]:
        """Route a raw (still percent-encoded) path.

        Raises:
            NotFound: no route has this path.
            MethodNotAllowed: routes have this path but not this method (``allow`` set).
            InvalidPathParameter: the path matched but a parameter value is unsafe.
        """
        if not raw_path.startswith("/"):
            raise NotFound("no endpoint at this path")
        segments = raw_path[1:].split("/")
        allowed: set[str] = set()
        fallback: tuple[RoutePattern, T] | None = None  # HEAD served by a GET route
        for pattern, route_method, target in self._by_length.get(len(segments), ()):
            if not all(
                p is not None or lit == seg
                for lit, p, seg in zip(pattern.segments, pattern.params, segments, strict=True)
            ):
                continue
            if route_method == method:
                return RouteMatch(target, _params(pattern, segments))
            if method == "HEAD" and route_method == "GET" and fallback is None:
                fallback = (pattern, target)
            allowed.add(route_method)
        if fallback is not None:
            return RouteMatch(fallback[1], _params(fallback[0], segments))
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")  # a GET route serves HEAD (RFC 9110 section 9.3.2)
            raise MethodNotAllowed(
                f"method {method} is not allowed here", allow=tuple(sorted(allowed))
            )
        raise NotFound("no endpoint at this path")


def _params(pattern: RoutePattern, segments: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, seg in zip(pattern.params, segments, strict=True):
        if name is not None:
            try:
                params[name] = decode_param(seg)
            except InvalidPathParameter as exc:
                raise InvalidPathParameter(f"path parameter {name!r}: {exc.message}") from None
    return params


# --- upstream URLs ------------------------------------------------------------------


def is_url_literal(text: str) -> bool:
    """Whether config-written URL text needs no encoding (RFC 3986 pchar, ``/``, ``?``, ``%``)."""
    return bool(_TEMPLATE_LITERAL.fullmatch(text))


@dataclass(frozen=True)
class BaseUrl:
    """An upstream's ``scheme://host:port[/base-path]``, split once, and how connections
    to it are made."""

    scheme: str
    host: str
    port: int
    base_path: str
    virtual_host: str | None = None  # ``host_header``: the authority to name instead
    # https: the upstream's (client_cert, client_key) files, presented in the TLS handshake
    client_identity: tuple[str, str] | None = None

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def join(self, path_and_query: str) -> str:
        return self.origin + self.base_path + path_and_query

    @cached_property
    def key(self) -> tuple[str, str, int, tuple[str, str] | None]:
        """(scheme, host, port, client identity): the transport's pool key. Upstreams on one
        origin share connections only if they present the same client certificate."""
        return (self.scheme, self.host, self.port, self.client_identity)

    @cached_property
    def _httpx_url(self) -> httpx.URL:
        return httpx.URL(self.origin + "/")

    @cached_property
    def printed_origin(self) -> str:
        """The origin as httpx prints a URL (no default port, IDNA host)."""
        return str(self._httpx_url)[:-1]

    @cached_property
    def host_header(self) -> bytes:
        """The Host field for this host (RFC 9110 section 7.2): the upstream's
        ``host_header`` if it has one, else this URL's authority as httpx writes it (the
        port only when not the default)."""
        if self.virtual_host is not None:
            return self.virtual_host.encode("ascii")
        return self._httpx_url.netloc

    @cached_property
    def server_name(self) -> str:
        """The TLS server name (SNI) and the name the certificate must match: the host
        of ``host_header`` if set, else this URL's host."""
        if self.virtual_host is None:
            return self.host
        return urlsplit("//" + self.virtual_host).hostname or self.host


_AUTHORITY = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


def check_host_header(text: str) -> str:
    """A ``host_header`` value: ``host[:port]`` (RFC 9110 section 7.2, a DNS name or a
    bracketed IPv6 address).

    Raises:
        TemplateError: anything else (a scheme, a path, spaces, a bad port).
    """
    if not _AUTHORITY.fullmatch(text):
        raise TemplateError("must be host or host:port, e.g. api.internal:8443")
    port = text.rpartition(":")[2] if not text.endswith("]") and ":" in text else None
    if port is not None and not 0 < int(port) < 65536:
        raise TemplateError("port must be 1-65535")
    return text


def parse_base_url(text: str) -> BaseUrl:
    """Parse and check an upstream URL.

    Raises:
        TemplateError: not http/https, no host, a bad port, credentials, query or fragment.
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise TemplateError(f"invalid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TemplateError("scheme must be http or https")
    if not parts.hostname:
        raise TemplateError("has no host")
    if parts.username is not None or parts.password is not None:
        raise TemplateError("must not contain credentials; use headers instead")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise TemplateError("must not contain a query or fragment")
    if not _TEMPLATE_LITERAL.fullmatch(parts.path) or "{" in parts.path:
        raise TemplateError("base path has characters that must be percent-encoded")
    default_port = 443 if parts.scheme == "https" else 80
    return BaseUrl(parts.scheme, parts.hostname, port or default_port, parts.path.rstrip("/"))


def encode_query(pairs: Sequence[tuple[str, str]]) -> str:
    """Encode query pairs with every reserved character percent-encoded."""
    return urlencode(pairs, quote_via=quote, safe="")
