"""Routes, path parameters and upstream URL templates (pure, no I/O).

A route matches the *raw* request path segment by segment, so a percent-encoded slash
stays inside its segment and is then refused as a parameter value (400), never re-routed.
A parameter value fills exactly one segment of an upstream path: it is percent-encoded
with nothing left safe (RFC 3986 section 2.1), so no value can add a segment, a query, a
fragment, or change the scheme, host or port, which come only from config.

Bytes are kept exactly, in the path and in the query alike. Percent-encoding stands for
octets (RFC 3986 section 2.1), not for UTF-8 text: a value is decoded to ``str`` as UTF-8
with ``surrogateescape`` (an octet that is not part of valid UTF-8 becomes a lone
surrogate, U+DC80 to U+DCFF) and encoded back the same way (:func:`encode_value`), so
``%FF`` reaches the upstream as ``%FF``, never as U+FFFD. What is refused is the same for
both: malformed percent-encoding (a ``%`` without two hex digits) and, where a value
fills a template, a value that could change the URL's structure (see
:func:`check_param_value`).
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
# "?" and "#" are not here: a value is encoded whole, so they cannot start a query or a
# fragment, and real identifiers hold them (guest-user ids such as "jane#EXT#@corp.example").
# A backslash too: some upstream servers (IIS, frameworks on Windows) take it for "/", which
# would let a value add a path step.
_FORBIDDEN_IN_VALUE = ("/", "\\")
# characters a config author may write literally in a path template (RFC 3986 pchar,
# "/" and "?", plus "%" for pre-encoded octets); anything else is a config error.
_TEMPLATE_LITERAL = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$")


T = TypeVar("T")


class TemplateError(ValueError):
    """A route or URL template in the config is malformed."""


# --- routes -------------------------------------------------------------------------


class RepeatedParameter(TemplateError):
    """A route names one parameter twice. Its parameter names are still known (``route``
    keeps each segment's name, the repeated one twice), so references to them can be
    checked in the same run."""

    def __init__(self, message: str, route: RoutePattern) -> None:
        super().__init__(message)
        self.route = route


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
        RepeatedParameter: a parameter named twice (once every segment is known good).
        TemplateError: not absolute, a parameter that is not a whole segment, or
            characters that are not allowed in a path.
    """
    if not text.startswith("/"):
        raise TemplateError("must start with '/'")
    if "?" in text or "#" in text:
        raise TemplateError("must not contain a query or fragment")
    segments = tuple(text[1:].split("/"))
    params: list[str | None] = []
    repeated: str | None = None
    for seg in segments:
        whole = _WHOLE_PARAM.fullmatch(seg)
        if whole:
            name = whole.group(1)
            if name in params and repeated is None:
                repeated = name
            params.append(name)
            continue
        if "{" in seg or "}" in seg:
            raise TemplateError(f"segment {seg!r}: a parameter must fill a whole segment")
        if not _TEMPLATE_LITERAL.fullmatch(seg):
            raise TemplateError(f"segment {seg!r} has characters not allowed in a path")
        params.append(None)
    route = RoutePattern(text, segments, tuple(params))
    if repeated is not None:
        raise RepeatedParameter(f"parameter {{{repeated}}} appears twice", route)
    return route


def decode_param(raw: str) -> str:
    """Percent-decode one raw path segment (its octets as latin-1 text, as the router gets
    the request target) and check it is a safe parameter value.

    Octets that are not valid UTF-8 are kept as lone surrogates (``surrogateescape``), so
    :func:`encode_value` gives them back exactly.

    Raises:
        InvalidPathParameter: malformed encoding, or unsafe once decoded (empty,
            ``.``/``..``, a ``/`` or a control character: :func:`check_param_value`).
    """
    try:
        raw_bytes = raw.encode("latin-1")
    except UnicodeEncodeError:  # not from a request target (those are octets); as UTF-8
        raw_bytes = raw.encode("utf-8", "surrogatepass")
    value = decode_octets(raw_bytes)
    check_param_value(value)
    return value


def decode_octets(raw: bytes, *, plus_is_space: bool = False) -> str:
    """Percent-decode raw URL octets to the octets they stand for, as ``str`` (UTF-8 with
    ``surrogateescape``). ``plus_is_space``: ``+`` is a space, as in a query's
    ``application/x-www-form-urlencoded`` pairs.

    Raises:
        InvalidPathParameter: a ``%`` not followed by two hex digits.
    """
    if b"%" in raw and _BAD_PERCENT.search(raw):
        raise InvalidPathParameter("malformed percent-encoding")
    if plus_is_space:
        raw = raw.replace(b"+", b" ")
    return unquote_to_bytes(raw).decode("utf-8", "surrogateescape")


def encode_value(value: str) -> str:
    """Percent-encode a decoded value whole (nothing left safe), giving back the octets it
    was decoded from (RFC 3986 section 2.1)."""
    return quote(value, safe="", errors="surrogateescape")


def check_param_value(value: str) -> None:
    """Refuse a decoded value that could change an upstream path's structure.

    ``?`` and ``#`` are allowed: the value is encoded whole, so they stay data.

    Raises:
        InvalidPathParameter: empty, ``.``/``..``, or containing ``/``, ``\\`` or a
            control character (C0, DEL, C1).
    """
    if value in ("", ".", ".."):
        raise InvalidPathParameter("empty, '.' and '..' are not allowed")
    for char in _FORBIDDEN_IN_VALUE:
        if char in value:
            raise InvalidPathParameter(
                "a backslash is not allowed" if char == "\\" else f"{char!r} is not allowed"
            )
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
                raise InvalidPathParameter(
                    f"path parameter {name!r}: {exc.message}",
                    fields={"parameter": name, "in": "path"},
                ) from None
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


# --- client queries -------------------------------------------------------------------

# octets a query may carry as they are (RFC 3986 section 3.4, without "&" and "#")
_QUERY_UNSAFE = re.compile(rb"[^A-Za-z0-9\-._~!$'()*+,;=:@/?%]")


@dataclass(frozen=True, slots=True)
class QueryPair:
    """One ``name=value`` pair of a client's query string (split on ``&``).

    ``name`` and ``value`` are decoded (``+`` is a space; octets kept exactly, with
    ``surrogateescape``). ``malformed``: the value has a ``%`` without two hex digits (it
    is then decoded leniently, the ``%`` kept). ``raw`` is the pair as the client sent it,
    with only octets that a request target cannot carry (spaces, quotes, non-ASCII)
    percent-encoded, for forwarding as it is.
    """

    name: str
    value: str
    raw: bytes
    malformed: bool = False


def _lenient(raw: bytes) -> str:
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "surrogateescape")


def parse_query(query_string: bytes) -> list[QueryPair]:
    """Split a raw query string into pairs, in order; empty pieces (``a=1&&b=2``) are
    dropped and a piece without ``=`` has the value ``""``, as HTML forms do."""
    pairs: list[QueryPair] = []
    for piece in query_string.split(b"&"):
        if not piece:
            continue
        raw_name, _, raw_value = piece.partition(b"=")
        raw = _QUERY_UNSAFE.sub(lambda m: b"%%%02X" % m.group()[0], piece)
        try:
            value = decode_octets(raw_value, plus_is_space=True)
        except InvalidPathParameter:
            pairs.append(QueryPair(_lenient(raw_name), _lenient(raw_value), raw, True))
            continue
        # a name only has to match config names: a stray "%" in it stays a "%"
        pairs.append(QueryPair(_lenient(raw_name), value, raw))
    return pairs
