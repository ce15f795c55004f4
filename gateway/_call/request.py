"""The upstream request of one backend call, built from config and the client request (pure).

Everything that addresses the upstream comes from config (origin, base path, the parsed
templates); the client request contributes only the values the config references
(``{param}``, ``{query.NAME}``, ``{header.NAME}``, ``{body.PATH}``, the JSON body) and the
fields it lists (``forward_headers``, ``forward_query``). Targets are percent-encoded and
checked here, so the transport sends them as they are. A JSON body the backend builds (a
body template, a GraphQL request: :mod:`gateway._rules.body`) is rendered from the same
references, with their JSON types.

:func:`_resolver` is the one place a reference's kind decides where its value is read;
:func:`check_client_values` checks every value the client supplies before any upstream is
called, as the request will use it (encoded, converted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, cast

import httpx
import orjson

from .._auth.rules import claim_at
from .._config.plan import BackendPlan, EndpointPlan
from .._errors import (
    InvalidHeader,
    InvalidPathParameter,
    InvalidQueryParameter,
    InvalidRequestBody,
    MissingClaim,
)
from .._observability.tracing import CURRENT
from .._rules.aggregate import BackendResult, Outcome
from .._rules.body import UnresolvedAt, check_values, place
from .._rules.graph import all_hold, skipped_by_condition
from .._rules.jsonpath import json_path
from .._rules.template import (
    WILDCARD,
    Ref,
    UnresolvedReference,
    expand,
    header_value,
    render,
    url_value,
    walk,
)
from .._rules.transform import JSON
from .._rules.urls import BaseUrl
from .._rules.validation import check_body, check_query

if TYPE_CHECKING:
    from .context import CallContext


@dataclass(frozen=True, slots=True, eq=False)
class UpstreamRequest:
    """One backend call as the transport sends it, without httpx objects: the origin and
    base path come from config, the target is already percent-encoded and checked, the
    header lines are complete (Host and Content-Length as httpx would add them)."""

    method: str
    base: BaseUrl  # scheme, host and port (its base path is part of ``target``)
    target: str  # path and query, as on the request line
    headers: list[tuple[bytes, bytes]]
    body: bytes | None = None
    auto_host: bool = False  # headers[0] is the Host field made for ``base``
    # the verified identity's digest on an endpoint with auth: the backend cache and
    # coalescing key on it, so no identity is ever given another's reply
    partition: str = ""

    @property
    def url(self) -> str:
        """``scheme://host[:port]/path?query``, as httpx prints the URL."""
        return self.base.printed_origin + self.target


# A target httpx would leave exactly as it is (no encoding, no dot segments to remove);
# any other goes through httpx.URL, so both forms agree.
_CANONICAL_TARGET = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
MAX_URL_LENGTH = 65536  # httpx's


def upstream_request(
    method: str,
    base: BaseUrl,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None = None,
    partition: str = "",
) -> UpstreamRequest:
    """The request httpx would build for ``base.origin + target`` (same target, same header
    lines in the same order); takes ownership of ``headers``.

    Raises:
        httpx.InvalidURL: the URL is too long or invalid.
    """
    if (
        _CANONICAL_TARGET.fullmatch(target) is None
        or "/." in target.partition("?")[0]
        or len(base.origin) + len(target) > MAX_URL_LENGTH
    ):
        target = httpx.URL(base.origin + target).raw_path.decode("ascii")
    names = {name.lower() for name, _ in headers}
    if body and b"content-length" not in names:
        headers.append((b"Content-Length", b"%d" % len(body)))
        names.add(b"content-length")
    auto: list[tuple[bytes, bytes]] = []
    if b"host" not in names:
        auto.append((b"Host", base.host_header))
    if (
        method in ("POST", "PUT", "PATCH")
        and b"content-length" not in names
        and b"transfer-encoding" not in names
    ):
        auto.append((b"Content-Length", b"0"))
    if auto:
        return UpstreamRequest(
            method, base, target, auto + headers, body, auto[0][0] == b"Host", partition
        )
    return UpstreamRequest(method, base, target, headers, body, partition=partition)


def with_host(request: UpstreamRequest, base: BaseUrl) -> UpstreamRequest:
    """The same request to another host of the upstream (same scheme and base path), with
    that host's ``Host`` field (RFC 9110 section 7.2: the target URI's authority, or the
    upstream's ``host_header``). A Host field the config set itself is kept."""
    if base is request.base:
        return request
    headers = request.headers
    if request.auto_host:
        headers = [(b"Host", base.host_header), *headers[1:]]
    return UpstreamRequest(
        request.method,
        base,
        request.target,
        headers,
        request.body,
        request.auto_host,
        request.partition,
    )


_NO_ELEMENT = object()
"""No ``for_each`` element: a ``[*]`` reference gives the array of its values."""

# What an aggregated call asks for unless the config sets Accept or forwards the client's.
DEFAULT_ACCEPT = (b"accept", b"application/json")


def _resolver(
    ctx: CallContext, results: Sequence[BackendResult | None], element: object = _NO_ELEMENT
) -> Callable[[Ref], JSON]:
    """The value of each reference for one call. ``element``: the array element of a
    ``for_each`` call, from which every ``[*]`` reference walks (they all walk one array);
    without one, a ``[*]`` reference gives the array of its values (body templates)."""

    def resolve(ref: Ref) -> JSON:
        # The one place a reference's kind decides where its value is read.
        kind = ref.kind
        if kind == "param":
            return ctx.params[ref.name]
        if kind == "query":
            values = ctx.query.get(ref.name)
            if not values:
                raise UnresolvedReference("not in the request's query")
            return values[0]
        if kind == "header":
            value = ctx.headers.get(ref.name)
            if value is None:
                raise UnresolvedReference("not in the request's headers")
            return value
        if kind in ("jwt", "apikey"):
            return identity_value(ctx, ref)
        if kind == "body":
            source = ctx.json_body
        else:
            result = results[ref.index]
            assert result is not None and result.outcome == Outcome.OK
            source = result.selected
        if ref.has_wildcard:
            if element is not _NO_ELEMENT:
                return walk(element, ref.path[ref.path.index(WILDCARD) + 1 :])
            return expand(source, ref.path)
        return walk(source, ref.path)

    return resolve


def identity_value(ctx: CallContext, ref: Ref) -> JSON:
    """The value of a ``{jwt.PATH}`` or ``{apikey.name}`` reference.

    Raises:
        UnresolvedReference: the request's identity has no such claim or key name.
    """
    identity = ctx.identity
    if ref.kind == "apikey":
        if identity is None or not identity.key_name:
            raise UnresolvedReference("the request was not authenticated with an API key")
        return identity.key_name
    if identity is None or identity.kind != "jwt":
        raise UnresolvedReference("the request was not authenticated with a token")
    value = claim_at(identity.claims, ref.path)
    if value is None:
        raise UnresolvedReference("the token has no such claim")
    return cast(JSON, value)


def check_client_values(
    endpoint: EndpointPlan, ctx: CallContext, malformed_query: Collection[str] = ()
) -> None:
    """Check, when the request arrives, every value from the client request that a backend
    to be called will read: ``{query.NAME}``, ``{header.NAME}`` and ``{body.PATH}``
    references (present, safe where they go, as :func:`build_request` will encode them,
    and converting where a body template converts them, path parameters included), and
    the JSON body a ``body:`` sends. Backends a ``when:`` skips are not checked. Path
    parameters were checked by the router, and values from upstream responses can only be
    checked when they arrive (``invalid_reference``).

    A missing, unsafe or unconvertible client value is the client's mistake (RFC 9110
    section 15.5.1: 400, so it can correct the request), never an upstream failure;
    checking it here means no upstream is called for a request that cannot be completed.

    Args:
        malformed_query: names whose first value has malformed percent-encoding.

    Raises:
        InvalidQueryParameter: a referenced query parameter is missing, malformed, unsafe
            or does not convert.
        InvalidHeader: a referenced header field is missing, unsafe or does not convert.
        InvalidPathParameter: a path parameter a body template converts does not convert.
        InvalidRequestBody: a backend sends the body (or a part of it) and there is none,
            or a referenced part of it is missing or does not convert; ``path`` is its
            JSONPath.
        MissingClaim: the verified identity lacks a claim a template reads.
    """
    backends = endpoint.backends
    skipped = (
        skipped_by_condition(
            [b.deps for b in backends],
            [all_hold(b.conditions, ctx.query, ctx.headers) for b in backends],
            endpoint.collections.skip_groups if endpoint.collections is not None else None,
        )
        if endpoint.has_conditions
        else None
    )
    for i, backend in enumerate(backends):
        if skipped is not None and skipped[i]:
            continue
        for ref in backend.url.refs:
            _check_ref(ref, url_value, ctx, malformed_query)
        for _, template in backend.header_templates:
            for ref in template.refs:
                _check_ref(ref, header_value, ctx, malformed_query)
        if backend.payload is not None:
            for use in backend.payload.uses:
                _check_ref(use.ref, partial(place, use.ref, sink=use.sink), ctx, malformed_query)
        if backend.for_each:
            _check_body_array(backend, ctx)
        if backend.body is None:
            continue
        if ctx.body is None:
            raise InvalidRequestBody(
                f"backend {backend.name!r} sends the request's JSON body, and the request has none",
                fields={"in": "body"},
            )
        if backend.body:
            try:
                walk(ctx.json_body, backend.body)
            except UnresolvedReference as exc:
                dotted = ".".join(str(s) for s in backend.body)
                raise InvalidRequestBody(
                    f"backend {backend.name!r} sends {dotted!r} of the request body: {exc}",
                    fields={"parameter": dotted, "in": "body", "path": json_path(backend.body)},
                ) from None


def check_schemas(
    endpoint: EndpointPlan,
    query: Mapping[str, Sequence[str]],
    json_body: JSON,
    has_body: bool,
) -> None:
    """Check the request against the endpoint's ``query_schema`` (its query parameters)
    and ``request_schema`` (its parsed JSON body), in that order, when the request
    arrives: like a missing value a template needs, a failure is the client's mistake
    (RFC 9110 section 15.5.1) and no upstream is called. Called only for an endpoint that
    has one of them.

    Raises:
        SchemaViolation: the query or the body fails its schema.
        InvalidRequestBody: a ``request_schema`` is set and the request has no body.
    """
    if endpoint.query_schema is not None:
        check_query(endpoint.query_schema, query)
    if endpoint.request_schema is not None:
        if not has_body:
            raise InvalidRequestBody(
                "the request has no JSON body, and this endpoint checks one against a schema",
                fields={"in": "body"},
            )
        check_body(endpoint.request_schema, json_body)


def _check_ref(
    ref: Ref,
    encode: Callable[[JSON], object],
    ctx: CallContext,
    malformed_query: Collection[str],
) -> None:
    """Check one client value a reference reads, as ``encode`` will use it."""
    kind = ref.kind
    error: type[InvalidQueryParameter | InvalidHeader | InvalidPathParameter]
    if kind == "query":
        fields = {"parameter": ref.name, "in": "query"}
        what = f"query parameter {ref.name!r}"
        if ref.name in malformed_query:
            raise InvalidQueryParameter(f"{what}: malformed percent-encoding", fields=fields)
        values = ctx.query.get(ref.name)
        if not values:
            raise InvalidQueryParameter(f"{what} is required", fields=fields)
        value: str = values[0]
        error = InvalidQueryParameter
    elif kind == "header":
        fields = {"parameter": ref.name, "in": "header"}
        what = f"header field {ref.name!r}"
        header = ctx.headers.get(ref.name)
        if header is None:
            raise InvalidHeader(f"{what} is required", fields=fields)
        value, error = header, InvalidHeader
    elif kind == "param":
        if ref.convert is None:
            return  # checked by the router
        fields = {"parameter": ref.name, "in": "path"}
        what = f"path parameter {ref.name!r}"
        value, error = ctx.params[ref.name], InvalidPathParameter
    elif kind in ("jwt", "apikey"):
        # a verified identity without what the endpoint reads: the client cannot fix
        # it by correcting the request, so a 403 (see MissingClaim), before any call
        claim = ".".join(str(s) for s in ref.path) if kind == "jwt" else "apikey.name"
        try:
            encode(identity_value(ctx, ref))
        except UnresolvedReference as exc:
            raise MissingClaim(
                f"{ref.text}: {exc}", reason="missing_claim", fields={"claim": claim}
            ) from None
        return
    elif kind == "body":
        _check_body_ref(ref, encode, ctx)
        return
    else:
        return
    try:
        encode(value)
    except UnresolvedReference as exc:
        raise error(f"{what}: {exc}", fields=fields) from None


def _check_body_ref(ref: Ref, encode: Callable[[JSON], object], ctx: CallContext) -> None:
    """A ``{body.PATH}`` value (with ``[*]``: every element's) is there and converts; the
    error names where with a JSONPath (RFC 9535), never the value."""
    if ctx.body is None:
        raise InvalidRequestBody(
            f"{ref.text} reads the request's JSON body, and the request has none",
            fields={"in": "body"},
        )
    try:
        check_values(ctx.json_body, ref.path, encode)
    except UnresolvedAt as exc:
        raise InvalidRequestBody(
            f"{ref.text}: {exc}", fields={"in": "body", "path": exc.at}
        ) from None


def _check_body_array(backend: BackendPlan, ctx: CallContext) -> None:
    """A ``for_each`` over an array of the client's body: no more elements than
    ``max_calls`` (the client sent too many, a 400, rather than an upstream's failure)."""
    ref = next(r for r in backend.refs if r.has_wildcard)
    if ref.kind != "body" or ctx.body is None:
        return
    head = ref.path[: ref.path.index(WILDCARD)]
    try:
        array = walk(ctx.json_body, head)
    except UnresolvedReference:
        return  # named by the checks of the reference itself
    if isinstance(array, list) and len(array) > backend.max_calls:
        raise InvalidRequestBody(
            f"{ref.text}: {len(array)} elements exceed max_calls {backend.max_calls}",
            fields={"in": "body", "path": json_path(head)},
        )


def build_request(
    backend: BackendPlan,
    ctx: CallContext,
    results: Sequence[BackendResult | None] = (),
    element: object = _NO_ELEMENT,
    span_id: bytes | None = None,
    *,
    default_accept: bool = True,
) -> UpstreamRequest:
    """The upstream request for one backend call: URL from config, references filled in.
    ``default_accept``: send ``Accept: application/json`` when neither the config nor a
    forwarded client field gives one (not for passthrough, which takes any body).

    Raises:
        UnresolvedReference: a referenced value is missing or unsafe.
        httpx.InvalidURL: the filled-in URL is too long.
    """
    resolve = _resolver(ctx, results, element)
    path = render(backend.url, resolve, url_value)
    if ctx.extra_query:
        path += ("&" if backend.url.has_query else "?") + ctx.extra_query
    # One line per field (RFC 9110 section 5.1: names are case-insensitive). What the config
    # sets wins: the backend's value over the upstream's (merged at compile time), either
    # over a forwarded client field of that name, and any of them over the default Accept.
    configured = backend.configured_names
    forwarded = [(k, v) for k, v in ctx.forward_headers if k not in configured]
    headers = []
    if (
        default_accept
        and b"accept" not in configured
        and not any(k == b"accept" for k, _ in forwarded)
    ):
        headers.append(DEFAULT_ACCEPT)
    headers.extend(backend.static_headers)
    for name, template in backend.header_templates:
        value = render(template, resolve, header_value)
        # octets a client sent (kept as surrogates) go back exactly; config text as UTF-8
        headers.append((name.encode("latin-1"), value.encode("utf-8", "surrogateescape")))
    headers.extend(forwarded)
    trace = CURRENT.get()
    if trace is not None:
        headers.extend(trace.child_headers(span_id))
    content: bytes | None = None
    if backend.body is not None:
        if ctx.body is None:
            raise UnresolvedReference("the request has no JSON body to send")
        if backend.body:
            try:
                content = orjson.dumps(walk(ctx.json_body, backend.body))
            except UnresolvedReference as exc:
                raise UnresolvedReference(f"request body: {exc}") from None
        else:
            content = ctx.body  # forwarded intact
        if b"content-type" not in configured:
            headers.append((b"content-type", b"application/json"))
    elif backend.payload is not None:  # a body template, or a GraphQL request
        content = backend.payload.encode(resolve)
        if b"content-type" not in configured:
            headers.append((b"content-type", b"application/json"))
    upstream = backend.upstream
    assert upstream is not None  # a static backend makes no request
    base = upstream.base
    partition = ctx.identity.partition if ctx.identity is not None else ""
    return upstream_request(
        backend.method, base, base.base_path + path, headers, content, partition
    )


def build_requests(
    backend: BackendPlan,
    ctx: CallContext,
    results: Sequence[BackendResult | None],
    span_id: bytes | None = None,
) -> list[UpstreamRequest]:
    """One request, or one per array element for ``for_each``.

    Raises:
        UnresolvedReference: a referenced value is missing or unsafe, or the array is
            longer than ``max_calls``.
    """
    if not backend.for_each:
        return [build_request(backend, ctx, results, span_id=span_id)]
    elements = _elements(backend, ctx, results)
    return [build_request(backend, ctx, results, element, span_id) for element in elements]


def build_item_requests(
    backend: BackendPlan,
    ctx: CallContext,
    results: Sequence[BackendResult | None],
    span_id: bytes | None = None,
) -> list[UpstreamRequest | None]:
    """For a ``for_each`` backend whose failed calls do not fail it (``on_item_error``
    ``skip`` or ``"null"``): one request per element, or None for an element whose values
    are missing or unusable (a failed item, as a failed call is).

    Raises:
        UnresolvedReference: the array is missing or longer than ``max_calls``.
    """
    requests: list[UpstreamRequest | None] = []
    for element in _elements(backend, ctx, results):
        try:
            requests.append(build_request(backend, ctx, results, element, span_id))
        except (UnresolvedReference, httpx.InvalidURL):
            requests.append(None)
    return requests


def _elements(
    backend: BackendPlan, ctx: CallContext, results: Sequence[BackendResult | None]
) -> list[JSON]:
    """The array a ``for_each`` backend walks.

    Raises:
        UnresolvedReference: it is missing, not an array, or longer than ``max_calls``.
    """
    # every [*] reference of the backend walks this one array (checked at load)
    ref = next(r for r in backend.refs if r.has_wildcard)
    if ref.kind == "body":
        source: JSON = ctx.json_body
    else:
        result = results[ref.index]
        assert result is not None
        source = result.selected
    try:
        elements = walk(source, ref.path[: ref.path.index(WILDCARD)])
        if not isinstance(elements, list):
            raise UnresolvedReference("[*] needs an array")
    except UnresolvedReference as exc:
        raise UnresolvedReference(f"{ref.text}: {exc}") from None
    if len(elements) > backend.max_calls:
        raise UnresolvedReference(
            f"{ref.text}: {len(elements)} elements exceed max_calls {backend.max_calls}"
        )
    return elements


REDIRECTS = frozenset({301, 302, 303, 307, 308})


def redirect_request(
    request: UpstreamRequest, status: int, location: str
) -> UpstreamRequest | None:
    """The request that follows a redirect, or None when it leaves the origin.

    RFC 9110 section 15.4: 303 (and, by long practice, 301/302 after a POST) turn into a
    GET without a body; 307 and 308 repeat the request as it was.

    Raises:
        httpx.InvalidURL: ``location`` is not a valid URL reference.
    """
    url = httpx.URL(request.url)
    target = url.join(location)
    if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
        return None
    path = target.raw_path.decode("ascii")
    if status == 303 or (status in (301, 302) and request.method == "POST"):
        headers = [
            (k, v)
            for k, v in request.headers
            if k.lower() not in (b"content-type", b"content-length", b"transfer-encoding")
        ]
        method = "GET" if request.method != "HEAD" else "HEAD"
        return upstream_request(method, request.base, path, headers, partition=request.partition)
    headers = [(k, v) for k, v in request.headers if k.lower() != b"host"]
    return upstream_request(
        request.method, request.base, path, headers, request.body, request.partition
    )
