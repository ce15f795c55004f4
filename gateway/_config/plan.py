"""The compiled form of a config: immutable plans shared by every request.

Built once at load by ``_compile``; the request path only reads them. Everything about a
backend call that does not depend on the request is decided here: the upstream's origin
and base path, the parsed templates, encoded static headers, timeouts, transforms, the
merge placement and the dependency graph.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from .._auth.plan import EndpointAuth
from .._errors import ConfigProblem
from .._rules.admin import ADMIN_PREFIX as ADMIN_PREFIX
from .._rules.admin import Listener
from .._rules.aggregate import BackendResult, Placement
from .._rules.balance import Balance, OutlierSettings
from .._rules.body import Payload
from .._rules.collect import CollectionsPlan, ItemErrors
from .._rules.cors import CorsPolicy
from .._rules.encoding import CompressionPolicy
from .._rules.forwarded import Network
from .._rules.graph import Condition
from .._rules.graphql import GraphQLPlan
from .._rules.resilience import GuardSettings
from .._rules.template import Ref, Template
from .._rules.transform import Transform
from .._rules.urls import BaseUrl, RoutePattern, Router
from .._rules.validation import CompiledSchema
from .._state.limiter import Limit
from .model import DEFAULT_MAX_TOTAL_RESPONSE_BYTES, GatewayConfig

RESERVED_BACKEND_NAMES = frozenset({"query", "header", "jwt", "apikey", "body"})

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 section 5.6.2
BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 section 5.5: no CR, LF, NUL


@dataclass(frozen=True)
class UpstreamPlan:
    name: str
    base: BaseUrl
    timeout_s: float
    max_connections: int
    idle_timeout_s: float
    max_response_bytes: int
    headers: tuple[tuple[str, str], ...]
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    guard: GuardSettings = field(default_factory=GuardSettings)
    hosts: tuple[BaseUrl, ...] = ()  # every host (``base`` is the first); one for ``url:``
    balance: Balance = "round_robin"
    outlier: OutlierSettings = field(default_factory=OutlierSettings)

    @property
    def all_hosts(self) -> tuple[BaseUrl, ...]:
        return self.hosts or (self.base,)


@dataclass(frozen=True)
class RateLimitPlan:
    """One endpoint limit: what is counted (``ip``, ``global``, ``header``, ``path``,
    ``query``, ``jwt``; ``key_name`` for the last four, lower-case for headers, a dot path
    for a claim) and the policy."""

    name: str
    limit: Limit
    key_kind: str
    key_name: str = ""


# Request fields carrying a client's credentials. RFC 9111 section 3.5: a shared cache must
# not reuse a response to a request with Authorization unless the response allows it; an
# aggregate has no single upstream response that could, and a cookie is a credential too.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie"})


@dataclass(frozen=True)
class RequestReads:
    """Every client request value an endpoint's backend calls depend on, so every value
    that can vary its answer: path parameters, query parameters and header fields (names
    lower-case) read by a template, a ``when:`` condition, ``forward_headers`` or
    ``forward_query``."""

    params: frozenset[str] = frozenset()
    query: frozenset[str] = frozenset()
    headers: frozenset[str] = frozenset()

    def names(self) -> list[str]:
        """``path.NAME``, ``query.NAME`` and ``header.NAME``, sorted within each source."""
        return [
            *(f"path.{n}" for n in sorted(self.params)),
            *(f"query.{n}" for n in sorted(self.query)),
            *(f"header.{n}" for n in sorted(self.headers)),
        ]


def request_reads(
    backends: Iterable[BackendPlan],
    forward_headers: Iterable[str],
    forward_query: Iterable[str],
) -> RequestReads:
    """What an endpoint with these backends reads from the client request (see
    :class:`RequestReads`). The client's body is not listed: only GET endpoints are
    cached, and they send no body."""
    params: set[str] = set()
    query: set[str] = set(forward_query)
    headers: set[str] = {name.lower() for name in forward_headers}
    for backend in backends:
        for ref in backend.refs:
            if ref.kind == "param":
                params.add(ref.name)
            elif ref.kind == "query":
                query.add(ref.name)
            elif ref.kind == "header":
                headers.add(ref.name)
        for condition in backend.conditions:
            (query if condition.source == "query" else headers).add(condition.name)
    return RequestReads(frozenset(params), frozenset(query), frozenset(headers))


@dataclass(frozen=True)
class EndpointCachePlan:
    """The aggregate cache of one endpoint.

    ``key`` is the configured key, (``path``|``query``|``header``, NAME) pairs, or None for
    the default one: every path parameter, the raw query string and ``vary_headers``.
    A request carrying one of ``bypass_headers`` is neither served from the cache nor
    stored in it.
    """

    ttl_s: float
    key: tuple[tuple[str, str], ...] | None
    reads: RequestReads = field(default_factory=RequestReads)
    vary_headers: tuple[bytes, ...] = ()  # every header ``reads`` names, sorted
    bypass_headers: frozenset[bytes] = CREDENTIAL_HEADERS  # those ``key`` does not name


@dataclass(frozen=True)
class BackendCachePlan:
    ttl_s: float | None  # used when Cache-Control gives no max-age
    coalesce: bool


Located = tuple[tuple[int | str, ...], Ref]
"""A reference with where it is in the backend's config (``("headers", "X-A")``)."""


def locate_refs(
    url: Template,
    header_templates: Iterable[tuple[str, Template]],
    payload: Payload | None,
    graphql: bool,
) -> tuple[Located, ...]:
    """Every reference of a backend's call (path, headers, the body it builds), with where
    it is in the backend's config."""
    found: list[Located] = [(("path",), ref) for ref in url.refs]
    found += [(("headers", n), ref) for n, t in header_templates for ref in t.refs]
    if payload is not None:
        root = ("graphql", "variables") if graphql else ("body", "template")
        found += [((*root, *use.location), use.ref) for use in payload.uses]
    return tuple(found)


@dataclass(frozen=True)
class BackendPlan:
    name: str
    upstream: UpstreamPlan | None  # None: a static backend
    method: str
    url: Template
    timeout_s: float
    max_response_bytes: int
    headers: tuple[tuple[str, str], ...]  # static: the upstream's
    header_templates: tuple[tuple[str, Template], ...]  # the backend's, may use references
    transform: Transform
    placement: Placement
    required: bool
    deps: tuple[int, ...] = ()  # indexes of the backends this one references

    @cached_property
    def static_authorization(self) -> frozenset[tuple[bytes, bytes]]:
        """The ``Authorization`` lines the config itself sets, the upstream's or the
        backend's without references (lower-case name, value)."""
        lines = {(k.lower(), v) for k, v in self.static_headers if k.lower() == b"authorization"}
        for name, template in self.header_templates:
            if name.lower() == "authorization" and not template.refs:
                text = "".join(p for p in template.parts if isinstance(p, str))
                lines.add((b"authorization", text.encode("utf-8")))
        return frozenset(lines)

    @cached_property
    def static_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The upstream's headers (less those the backend sets), encoded once."""
        return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers)

    @cached_property
    def configured_names(self) -> frozenset[bytes]:
        """The lower-case names of every header the config sets on this call (the
        upstream's and the backend's): a forwarded client field of one of these names,
        and the gateway's default ``Accept``, are not sent."""
        return frozenset(
            name.lower().encode("latin-1")
            for name in (*(k for k, _ in self.headers), *(k for k, _ in self.header_templates))
        )

    conditions: tuple[Condition, ...] = ()
    for_each: bool = False
    max_calls: int = 32
    on_item_error: ItemErrors = "fail"  # what one failed for_each call does
    body: tuple[str, ...] | None = None  # () forwards the client's body whole
    return_headers: frozenset[bytes] = frozenset()
    follow_redirects: bool = False
    max_redirects: int = 3
    # Resilience settings of the backend's own (None: the upstream's), with whether it has a
    # circuit breaker and a bulkhead of its own; its guard is found under ``guard_key``.
    guard: GuardSettings | None = None
    own_breaker: bool = False
    own_bulkhead: bool = False
    guard_key: str = ""
    cache: BackendCachePlan | None = None
    # the JSON body built for each call (body: {template}, or graphql's request)
    payload: Payload | None = None
    graphql: GraphQLPlan | None = None
    static: BackendResult | None = None  # a static backend's result, made at load

    @property
    def guard_name(self) -> str:
        """Key of this backend's guard: its own, else its upstream's."""
        return self.guard_key or (self.upstream.name if self.upstream is not None else "")

    @cached_property
    def located_refs(self) -> tuple[Located, ...]:
        """Every reference of the call (see :func:`locate_refs`)."""
        return locate_refs(self.url, self.header_templates, self.payload, self.graphql is not None)

    @cached_property
    def refs(self) -> tuple[Ref, ...]:
        """Every reference of the call (see :attr:`located_refs`)."""
        return tuple(ref for _, ref in self.located_refs)


@dataclass(frozen=True)
class WebSocketPlan:
    """A passthrough endpoint's ``websocket`` settings, compiled.

    Args:
        max_message_bytes: the largest message relayed either way (all its frames).
        idle_timeout_s: seconds without a message or ping either way before both sides
            are closed with 1001.
        max_connections: open sockets of the endpoint in one worker.
        origins: the ``allow_origins`` policy (its origins and patterns alone), or None
            for any origin.
    """

    max_message_bytes: int
    idle_timeout_s: float
    max_connections: int
    origins: CorsPolicy | None = None


@dataclass(frozen=True)
class EndpointPlan:
    index: int
    path: str
    method: str
    route: RoutePattern
    deadline_s: float
    forward_headers: tuple[str, ...]  # lower-case
    forward_query: frozenset[str]
    passthrough: bool
    backends: tuple[BackendPlan, ...]
    placements: tuple[Placement, ...]
    debug: bool = False
    max_total_response_bytes: int = DEFAULT_MAX_TOTAL_RESPONSE_BYTES
    rate_limits: tuple[RateLimitPlan, ...] = ()
    cache: EndpointCachePlan | None = None
    auth: EndpointAuth | None = None  # None: no policy (auth: null, or none configured)
    # response_headers (name, value), defaults' included; removed_fields (lower-case): the
    # names taken out of the response head first, remove_headers' and response_headers'
    response_fields: tuple[tuple[bytes, bytes], ...] = ()
    removed_fields: frozenset[bytes] = frozenset()
    # cors: its static fields are in response_fields already (Vary: Origin, or the
    # wildcard's), as is compression's Vary; configured_fields: response_headers alone,
    # what an OPTIONS answer (a preflight, or a plain one) adds
    cors: CorsPolicy | None = None
    configured_fields: tuple[tuple[bytes, bytes], ...] = ()
    # merge.arrays concat, group references, into, on_item_error, shape; None: none of
    # them, and the body is aggregate.merge's alone (the hot path)
    collections: CollectionsPlan | None = None
    # request_schema and query_schema, compiled (None: not configured, nothing is checked)
    request_schema: CompiledSchema | None = None
    query_schema: CompiledSchema | None = None
    compression: CompressionPolicy | None = None  # None: off (compression: false)
    websocket: WebSocketPlan | None = None  # None: upgrades are refused

    @cached_property
    def forward_header_names(self) -> frozenset[bytes]:
        """``forward_headers`` as the raw lower-case names ASGI gives."""
        return frozenset(name.encode("latin-1") for name in self.forward_headers)

    @cached_property
    def has_conditions(self) -> bool:
        """Whether any backend has a ``when:`` (else nothing is ever skipped)."""
        return any(b.conditions for b in self.backends)

    @cached_property
    def reads_body(self) -> bool:
        """Whether any backend sends (part of) the client's JSON body or references it, or
        a ``request_schema`` checks it."""
        return self.request_schema is not None or any(
            b.body is not None or any(r.kind == "body" for r in b.refs) for b in self.backends
        )

    @cached_property
    def reads_request_values(self) -> bool:
        """Whether conditions or templates look at the client's query or headers, or at
        the verified identity's claims or key name, or convert a path parameter."""
        return any(
            b.conditions
            or any(
                r.kind in ("query", "header", "jwt", "apikey")
                or (r.kind == "param" and r.convert is not None)
                for r in b.refs
            )
            for b in self.backends
        )


@dataclass(frozen=True)
class GatewayPlan:
    """A loaded config, ready to serve. Immutable; shared by every request."""

    file: str
    config: GatewayConfig
    upstreams: Mapping[str, UpstreamPlan]
    endpoints: tuple[EndpointPlan, ...]
    router: Router[EndpointPlan] = field(repr=False)
    trusted_proxies: tuple[Network, ...] = ()
    admin_allow: tuple[Network, ...] = ()
    admin_listener: Listener | None = None  # server.admin_bind; None: the public listener
    warnings: tuple[ConfigProblem, ...] = ()  # risky but valid settings
