"""Compiling a validated config into plans (compile once, run many).

Cross-references (unknown upstream, unknown path parameter or backend, duplicate names,
dependency cycles) are checked here, every problem collected before raising.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from .._auth.plan import EndpointAuth
from .._errors import ConfigError, ConfigProblem
from .._observability.otel import OTEL_MISSING, otel_available
from .._rules.admin import Listener, parse_listener
from .._rules.aggregate import Placement
from .._rules.balance import OutlierSettings
from .._rules.cors import CORS_RESPONSE_FIELDS, CorsPolicy
from .._rules.forwarded import Network, parse_networks
from .._rules.graph import Condition, find_cycle
from .._rules.headers import (
    GATEWAY_PREFIX,
    HOP_BY_HOP,
    NEVER_FORWARDED_STR,
    NEVER_RETURNED_STR,
)
from .._rules.resilience import (
    BreakerSettings,
    BulkheadSettings,
    GuardSettings,
    HedgeSettings,
    RetrySettings,
)
from .._rules.template import Ref, Template, parse_template, parse_url_template
from .._rules.transform import Transform
from .._rules.urls import (
    BaseUrl,
    RepeatedParameter,
    RoutePattern,
    Router,
    TemplateError,
    check_host_header,
    parse_base_url,
    parse_route,
)
from .._state.limiter import parse_limit
from .auth_compile import compile_policies, endpoint_auth
from .body_compile import (
    compile_request_shape,
    graphql_warnings,
    static_ref_problems,
    static_result,
)
from .collections_compile import (
    GroupSlot,
    compile_collections,
    group_slots,
    into_warnings,
    link_group,
)
from .compression_compile import compile_compression
from .cors_compile import compile_cors
from .load import format_path, load_document, read_config_file
from .model import (
    BackendConfig,
    BulkheadConfig,
    CircuitBreakerConfig,
    DefaultsConfig,
    EndpointConfig,
    GatewayConfig,
    HedgeConfig,
    RetryConfig,
    UpstreamConfig,
    backend_has_default,
    endpoint_cors,
)
from .model import endpoint_auth as endpoint_auth_names
from .plan import (
    ADMIN_PREFIX,
    BAD_VALUE,
    CREDENTIAL_HEADERS,
    RESERVED_BACKEND_NAMES,
    TOKEN,
    BackendCachePlan,
    BackendPlan,
    EndpointCachePlan,
    EndpointPlan,
    GatewayPlan,
    RateLimitPlan,
    RequestReads,
    UpstreamPlan,
    request_reads,
)
from .salvage import LeftOut
from .schema_compile import endpoint_schemas
from .tls import ca_file_problems, cert_pair_problems
from .units import format_duration
from .websocket_compile import compile_websocket


def _check_headers(
    headers: Mapping[str, str],
    file: str,
    where: tuple[int | str, ...],
    problems: list[ConfigProblem],
) -> tuple[tuple[str, str], ...]:
    out = []
    seen: dict[str, str] = {}  # lower-case name -> the name as first written
    for name, value in headers.items():
        # field names are case-insensitive (RFC 9110 section 5.1): X-A and x-a are one field
        first = seen.setdefault(name.lower(), name)
        if first != name:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, name)),
                    f"the same header as {first} (header names are case-insensitive)",
                )
            )
        elif not TOKEN.fullmatch(name):
            problems.append(ConfigProblem(file, format_path((*where, name)), "invalid header name"))
        elif name.lower() in NEVER_FORWARDED_STR:
            problems.append(
                ConfigProblem(
                    file, format_path((*where, name)), "this header is set by the gateway"
                )
            )
        elif BAD_VALUE.search(value):
            problems.append(
                ConfigProblem(
                    file, format_path((*where, name)), "header value has a control character"
                )
            )
        else:
            out.append((name, value))
    return tuple(out)


def compile_config(config: GatewayConfig, file: str = "<config>") -> GatewayPlan:
    """Check cross-references and build the plans.

    Raises:
        ConfigError: with every problem found.
    """
    return _compile(config, file, LeftOut())


def _compile(config: GatewayConfig, file: str, left_out: LeftOut) -> GatewayPlan:
    """:func:`compile_config` of a document from which ``left_out`` was pruned (parts that
    failed validation): references to them are not reported as unknown."""
    problems: list[ConfigProblem] = []
    defaults = config.defaults

    upstreams: dict[str, UpstreamPlan] = {}
    for name, up in config.upstreams.items():
        where: tuple[int | str, ...] = ("upstreams", name)
        hosts = _upstream_hosts(up, file, where, problems)
        if not hosts:
            continue
        base = hosts[0]
        upstreams[name] = UpstreamPlan(
            name=name,
            base=base,
            timeout_s=up.timeout if up.timeout is not None else defaults.timeout,
            max_connections=up.max_connections or defaults.max_connections,
            idle_timeout_s=up.idle_timeout,
            max_response_bytes=up.max_response_size or defaults.max_response_size,
            headers=_check_headers(up.headers, file, (*where, "headers"), problems),
            ca_file=up.ca_file,
            client_cert=up.client_cert,
            client_key=up.client_key,
            guard=GuardSettings(
                _retry_settings(up.retries),
                _breaker_settings(up.circuit_breaker),
                _bulkhead_settings(up.bulkhead),
                _hedge_settings(up.hedge),
            ),
            hosts=hosts,
            balance=up.balance,
            outlier=OutlierSettings(
                up.outlier_detection.consecutive_failures,
                up.outlier_detection.ejection,
                up.outlier_detection.max_ejection,
                up.outlier_detection.max_ejected,
            ),
        )
        if up.ca_file is not None:
            if base.scheme != "https":
                problems.append(
                    ConfigProblem(file, format_path((*where, "ca_file")), "only used with https")
                )
            elif not os.path.isfile(up.ca_file):
                problems.append(
                    ConfigProblem(
                        file, format_path((*where, "ca_file")), f"no such file: {up.ca_file}"
                    )
                )

        if (up.client_cert or up.client_key) and base.scheme != "https":
            problems.append(
                ConfigProblem(file, format_path((*where, "client_cert")), "only used with https")
            )
        elif base.scheme == "https":
            problems += cert_pair_problems(
                file,
                up.client_cert,
                up.client_key,
                (*where, "client_cert"),
                (*where, "client_key"),
            )

    # Connections are pooled per origin and client certificate: upstreams sharing a pool
    # must agree on its settings. Different certificates on one origin make separate pools.
    by_pool: dict[tuple[str, str, int, tuple[str, str] | None], tuple[UpstreamPlan, object]] = {}
    pool_settings = ("max_connections", "idle_timeout_s", "ca_file")
    for up_name, up_plan in upstreams.items():
        for host in up_plan.all_hosts:
            # the TLS server name a host_header sets is a setting of the pool's connections
            server_name = host.server_name if host.virtual_host is not None else None
            first, first_server_name = by_pool.setdefault(host.key, (up_plan, server_name))
            if first is not up_plan and (
                first_server_name != server_name
                or any(getattr(first, key) != getattr(up_plan, key) for key in pool_settings)
            ):
                identity = (
                    f"client certificate {up_plan.client_cert}"
                    if up_plan.client_cert is not None
                    else "no client certificate"
                )
                problems.append(
                    ConfigProblem(
                        file,
                        format_path(("upstreams", up_name)),
                        f"shares its {host.origin} pool ({identity}) with upstream "
                        f"{first.name!r} but sets different max_connections, idle_timeout, "
                        "ca_file or host_header (one pool per origin and client certificate)",
                    )
                )
                break

    policies = compile_policies(
        config.auth,
        upstreams,
        frozenset({*config.upstreams, *left_out.upstreams}),
        file,
        problems,
    )

    def known_policies(name: str) -> bool:
        # a policy left out for problems of its own is not also reported as unknown
        return name in config.auth or left_out.policy_left_out(name)

    default_auth = config.defaults.auth
    # unknown names in defaults.auth are reported once, there, not on every endpoint
    endpoint_auth(
        []
        if default_auth is None
        else [default_auth]
        if isinstance(default_auth, str)
        else default_auth,
        policies,
        known_policies,
        "defaults.auth",
        file,
        problems,
    )

    endpoints: list[EndpointPlan] = []
    seen_routes: dict[tuple[tuple[str | None, ...], str], int] = {}
    default_fields = _response_settings(config.defaults, ("defaults",), file, problems)
    if config.defaults.cors is not None:  # its problems once, not for every endpoint
        compile_cors(config.defaults.cors, "GET", ("defaults", "cors"), file, problems)
    for ei, ep in enumerate(config.endpoints):
        where = ("endpoints", ei)
        try:
            route = parse_route(ep.path)
        except RepeatedParameter as exc:
            # its parameter names are known: check the backends against them too (no plan
            # is made, as a problem is recorded)
            problems.append(ConfigProblem(file, format_path((*where, "path")), str(exc)))
            route = exc.route
        except TemplateError as exc:
            problems.append(ConfigProblem(file, format_path((*where, "path")), str(exc)))
            continue
        if ep.path == ADMIN_PREFIX or ep.path.startswith(ADMIN_PREFIX + "/"):
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "path")),
                    f"{ADMIN_PREFIX}/ is reserved for the gateway",
                )
            )
        shape = (
            tuple(None if p else s for s, p in zip(route.segments, route.params, strict=True)),
            ep.method,
        )
        if shape in seen_routes:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "path")),
                    f"{ep.method} {ep.path} is already defined by endpoints[{seen_routes[shape]}]",
                )
            )
        seen_routes.setdefault(shape, ei)

        forward_headers = []
        for hi, header in enumerate(ep.forward_headers):
            if not TOKEN.fullmatch(header):
                problems.append(
                    ConfigProblem(
                        file, format_path((*where, "forward_headers", hi)), "invalid header name"
                    )
                )
            elif header.lower() in NEVER_FORWARDED_STR or header.lower().startswith(GATEWAY_PREFIX):
                problems.append(
                    ConfigProblem(
                        file,
                        format_path((*where, "forward_headers", hi)),
                        f"{header} is hop-by-hop or set by the gateway and cannot be forwarded",
                    )
                )
            else:
                forward_headers.append(header.lower())
        for qi, name in enumerate(ep.forward_query):
            if not name:
                problems.append(
                    ConfigProblem(
                        file, format_path((*where, "forward_query", qi)), "empty parameter name"
                    )
                )

        dropped = left_out.backends_left_out(ei)
        if ep.passthrough and len(ep.backends) != 1 and dropped == frozenset():
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "backends")),
                    f"a passthrough endpoint has exactly one backend (found {len(ep.backends)})",
                )
            )

        backends: list[BackendPlan] = []
        names: dict[str, int] = {}
        for bi, be in enumerate(ep.backends):
            names.setdefault(be.name, bi)
        groups = group_slots(ep)
        for bi, be in enumerate(ep.backends):
            plan = _compile_backend(
                be,
                (*where, "backends", bi),
                route,
                names,
                upstreams,
                config,
                ep,
                file,
                problems,
                left_out=_LeftOutNames(left_out, dropped),
                groups=groups,
            )
            if names[be.name] != bi:
                problems.append(
                    ConfigProblem(
                        file,
                        format_path((*where, "backends", bi, "name")),
                        f"duplicate backend name {be.name!r}",
                    )
                )
                plan = None
            if plan is not None:
                backends.append(plan)
        static_ref_problems(backends, names, where, file, problems)
        if len(backends) == len(ep.backends):
            cycle = find_cycle({b.name: [backends[d].name for d in b.deps] for b in backends})
            if cycle:
                problems.append(
                    ConfigProblem(
                        file,
                        format_path((*where, "backends", names[cycle[0]], "path")),
                        "dependency cycle: " + " -> ".join(cycle),
                    )
                )

        complete = len(backends) == len(ep.backends)
        collections = compile_collections(
            config, ep, backends if complete else None, groups, where, file, problems
        )
        own_auth = "auth" in ep.model_fields_set
        auth_names = endpoint_auth_names(config, ep)
        auth = endpoint_auth(
            auth_names,
            policies,
            known_policies,
            format_path((*where, "auth")),
            file,
            problems if own_auth else [],
        )
        # a policy left out for problems of its own (reported there) cannot tell whether
        # {jwt.*} or {apikey.name} could be filled
        if not any(name not in policies and known_policies(name) for name in auth_names):
            _identity_refs(backends, names, auth, where, file, problems)
        schemas = endpoint_schemas(ep, where, file, problems)  # reported even without a plan
        if len(backends) == len(ep.backends):
            cache = _endpoint_cache(
                ep,
                route,
                request_reads(backends, forward_headers, ep.forward_query),
                where,
                file,
                problems,
            )
            if cache is not None and auth is not None:
                # the identity is part of the key (endpoint_cache_key): a credential no
                # longer makes the answer one client's, it is kept for that identity only
                cache = replace(cache, bypass_headers=frozenset())
            endpoints.append(
                EndpointPlan(
                    index=ei,
                    path=ep.path,
                    method=ep.method,
                    route=route,
                    deadline_s=ep.deadline if ep.deadline is not None else defaults.deadline,
                    forward_headers=tuple(forward_headers),
                    forward_query=frozenset(ep.forward_query),
                    passthrough=ep.passthrough,
                    backends=tuple(backends),
                    placements=tuple(b.placement for b in backends),
                    debug=ep.debug,
                    max_total_response_bytes=defaults.max_total_response_size,
                    rate_limits=_rate_limits(ep, route, auth, where, file, problems),
                    cache=cache,
                    auth=auth,
                    collections=collections,
                    websocket=compile_websocket(ep, where, file, problems),
                    **_with_cors(
                        _response_fields(default_fields, ep, where, file, problems),
                        _endpoint_cors(config, ep, where, file, problems),
                    ),
                    **schemas,
                )
            )

    endpoints = compile_compression(config, endpoints, file, problems)
    if config.state.redis is not None:
        redis_url = urlsplit(config.state.redis)
        if redis_url.scheme not in ("redis", "rediss") or not redis_url.hostname:
            problems.append(
                ConfigProblem(file, "state.redis", "must be redis://HOST:PORT/DB or rediss://...")
            )
    if config.tracing is not None and not otel_available():
        problems.append(ConfigProblem(file, "tracing", OTEL_MISSING))
    trusted: tuple[Network, ...] = ()
    for ti, cidr in enumerate(config.server.trusted_proxies):
        try:
            trusted += parse_networks([cidr])
        except ValueError:
            problems.append(
                ConfigProblem(
                    file,
                    format_path(("server", "trusted_proxies", ti)),
                    f"{cidr!r} is not an IP address or CIDR network",
                )
            )
    admin_allow: tuple[Network, ...] = ()
    for ai, cidr in enumerate(config.server.admin_allow):
        try:
            admin_allow += parse_networks([cidr])
        except ValueError:
            problems.append(
                ConfigProblem(
                    file,
                    format_path(("server", "admin_allow", ai)),
                    f"{cidr!r} is not an IP address or CIDR network",
                )
            )
    admin_listener: Listener | None = None
    if config.server.admin_bind is not None:
        try:
            admin_listener = parse_listener(config.server.admin_bind)
        except ValueError as exc:
            problems.append(ConfigProblem(file, "server.admin_bind", str(exc)))
        else:
            if _listeners_overlap(admin_listener, config.server.bind):
                problems.append(
                    ConfigProblem(
                        file,
                        "server.admin_bind",
                        f"{config.server.admin_bind!r} overlaps server.bind "
                        f"{config.server.bind!r}: the admin routes need a listener of their own "
                        "(another port)",
                    )
                )
    problems += _server_tls_problems(config, file)
    if problems:
        raise ConfigError(problems)
    router = Router((e.route, e.method, e) for e in endpoints)
    compiled = GatewayPlan(
        file, config, upstreams, tuple(endpoints), router, trusted, admin_allow, admin_listener
    )
    return replace(compiled, warnings=tuple(risky_settings(compiled)))


def _server_tls_problems(config: GatewayConfig, file: str) -> list[ConfigProblem]:
    tls = config.server.tls
    if tls is None:
        return []
    where = ("server", "tls")
    problems = cert_pair_problems(
        file, tls.cert_file, tls.key_file, (*where, "cert_file"), (*where, "key_file")
    )
    if tls.client_ca_file is not None:
        problems += ca_file_problems(file, tls.client_ca_file, (*where, "client_ca_file"))
    elif tls.require_client_cert:
        problems.append(
            ConfigProblem(
                file, format_path((*where, "client_ca_file")), "required with require_client_cert"
            )
        )
    return problems


RATE_LIMIT_KEYS = ("ip", "global")
KEYED_SOURCES = ("header", "path", "query")


# Fields a config may not set or remove on responses: the framing and connection
# management the server does per message (RFC 9110 sections 6.6.1, 7.6.1, 8.3, 8.4 and
# 8.6, RFC 9112 section 6), and the fields the gateway sets itself (X-Request-Id and its
# X-Gateway-* report).
_SERVER_OWNED = HOP_BY_HOP | {
    b"content-length",
    b"content-type",
    b"content-encoding",
    b"date",
    b"x-request-id",
}
# Fields an answer's meaning depends on (RFC 9110 sections 10.2.3 and 11.6.1): never removed.
_NEVER_REMOVED = frozenset({b"retry-after", b"www-authenticate"})


def _owned(lower: bytes) -> bool:
    return lower in _SERVER_OWNED or lower.startswith(GATEWAY_PREFIX.encode())


def _response_settings(
    source: DefaultsConfig | EndpointConfig,
    at: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
) -> tuple[dict[bytes, tuple[bytes, bytes]], set[bytes]]:
    """One section's ``response_headers`` (by lower-case name) and ``remove_headers``."""
    fields: dict[bytes, tuple[bytes, bytes]] = {}
    removed: set[bytes] = set()
    for name, value in source.response_headers.items():
        path = format_path((*at, "response_headers", name))
        lower = name.lower().encode("latin-1", "replace")
        if not TOKEN.fullmatch(name):
            problems.append(ConfigProblem(file, path, "not a valid field name"))
        elif _owned(lower):
            problems.append(ConfigProblem(file, path, "set by the gateway for each response"))
        elif lower in CORS_RESPONSE_FIELDS:
            problems.append(ConfigProblem(file, path, "set by the gateway from cors: settings"))
        elif not all(c == "\t" or " " <= c <= "~" for c in value):
            # RFC 9110 section 5.5: visible ASCII, spaces and tabs
            problems.append(ConfigProblem(file, path, "not a valid field value"))
        elif lower in fields:
            problems.append(
                ConfigProblem(file, path, "the same field as another (names are case-insensitive)")
            )
        else:
            fields[lower] = (name.encode("latin-1"), value.strip().encode("latin-1"))
    for i, name in enumerate(source.remove_headers):
        path = format_path((*at, "remove_headers", i))
        lower = name.lower().encode("latin-1", "replace")
        if not TOKEN.fullmatch(name):
            problems.append(ConfigProblem(file, path, "not a valid field name"))
        elif _owned(lower) or lower in _NEVER_REMOVED:
            problems.append(ConfigProblem(file, path, "the response needs this field"))
        elif lower in fields:
            problems.append(
                ConfigProblem(file, path, "also in response_headers here: set it or remove it")
            )
        else:
            removed.add(lower)
    return fields, removed


def _response_fields(
    defaults: tuple[dict[bytes, tuple[bytes, bytes]], set[bytes]],
    ep: EndpointConfig,
    where: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
) -> dict[str, Any]:
    """``response_headers`` and ``remove_headers`` of ``defaults`` (checked once, by the
    caller) and the endpoint, merged (names compare case-insensitively, RFC 9110 section
    5.1; the endpoint's value wins)."""
    fields, removed = _response_settings(ep, where, file, problems)
    for i, name in enumerate(ep.remove_headers):
        lower = name.lower().encode("latin-1", "replace")
        if lower in removed and lower in defaults[0]:
            # the defaults' field would be added after the removal: a silent no-op
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "remove_headers", i)),
                    "defaults.response_headers sets it on every endpoint (to leave it out"
                    " here, set it per endpoint instead)",
                )
            )
    fields = {**defaults[0], **fields}
    removed = removed | defaults[1]
    # a configured field replaces the answer's own: its name is taken out first
    removed |= fields.keys()
    return {
        "response_fields": tuple(fields.values()),
        "removed_fields": frozenset(removed),
        "configured_fields": tuple(fields.values()),
    }


def _endpoint_cors(
    config: GatewayConfig,
    ep: EndpointConfig,
    where: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
) -> CorsPolicy | None:
    """The endpoint's CORS policy: its own ``cors`` (problems placed there), else the
    defaults' (whose problems were reported once)."""
    settings = endpoint_cors(config, ep)
    if settings is None:
        return None
    if ep.cors is not None:
        return compile_cors(settings, ep.method, (*where, "cors"), file, problems)
    return compile_cors(settings, ep.method, ("defaults", "cors"), file, [])


def _with_cors(fields: dict[str, Any], cors: CorsPolicy | None) -> dict[str, Any]:
    """The endpoint's response fields with CORS: its static fields join every answer, and
    an upstream's own ``Access-Control-*`` fields are dropped (the gateway's replace them)."""
    if cors is None:
        return fields
    return {
        **fields,
        "response_fields": (*fields["response_fields"], *cors.static_fields),
        "removed_fields": fields["removed_fields"] | CORS_RESPONSE_FIELDS,
        "cors": cors,
    }


def _identity_refs(
    backends: list[BackendPlan],
    names: Mapping[str, int],
    auth: EndpointAuth | None,
    where: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
) -> None:
    """``{jwt.*}`` needs a JWT policy on the endpoint, ``{apikey.name}`` an API key one:
    otherwise the reference could never be filled. ``names``: each backend's index in the
    config (``backends`` leaves out those that did not compile)."""
    for backend in backends:
        bi = names[backend.name]
        for key, ref in backend.located_refs:
            if ref.kind == "jwt" and (auth is None or not auth.has_jwt):
                message = f"{ref.text} needs a jwt policy in the endpoint's auth"
            elif ref.kind == "apikey" and (auth is None or not auth.has_api_key):
                message = f"{ref.text} needs an api_key policy in the endpoint's auth"
            else:
                continue
            problems.append(
                ConfigProblem(file, format_path((*where, "backends", bi, *key)), message)
            )


def _rate_limits(
    ep: EndpointConfig,
    route: RoutePattern,
    auth: EndpointAuth | None,
    where: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
) -> tuple[RateLimitPlan, ...]:
    if ep.rate_limit is None:
        return ()
    listed = isinstance(ep.rate_limit, list)
    limits = ep.rate_limit if isinstance(ep.rate_limit, list) else [ep.rate_limit]
    plans: list[RateLimitPlan] = []
    names: set[str] = set()
    for li, rl in enumerate(limits):
        at = (*where, "rate_limit", li) if listed else (*where, "rate_limit")
        try:
            limit = parse_limit(rl.rate, rl.burst)
        except ValueError as exc:
            problems.append(ConfigProblem(file, format_path((*at, "rate")), str(exc)))
            continue
        kind, _, key_name = rl.key.partition(":")
        if rl.key in RATE_LIMIT_KEYS:
            key_name = ""
        elif kind == "jwt" and key_name:
            if auth is None or not auth.has_jwt:
                problems.append(
                    ConfigProblem(
                        file,
                        format_path((*at, "key")),
                        f"{rl.key} counts per claim: the endpoint's auth needs a jwt policy",
                    )
                )
                continue
        elif kind not in KEYED_SOURCES or not key_name:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*at, "key")),
                    "must be ip, global, header:NAME, path:NAME, query:NAME or jwt:CLAIM",
                )
            )
            continue
        elif kind == "path" and key_name not in route.param_names:
            problems.append(
                ConfigProblem(
                    file, format_path((*at, "key")), f"{ep.path} has no parameter {key_name!r}"
                )
            )
            continue
        elif kind == "header":
            key_name = key_name.lower()
        name = rl.name if rl.name is not None else rl.key.replace(":", "-")
        if name in names:
            problems.append(
                ConfigProblem(file, format_path((*at, "name")), f"duplicate policy name {name!r}")
            )
            continue
        names.add(name)
        plans.append(RateLimitPlan(name, limit, kind, key_name))
    return tuple(plans)


def _endpoint_cache(
    ep: EndpointConfig,
    route: RoutePattern,
    reads: RequestReads,
    where: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
) -> EndpointCachePlan | None:
    """The endpoint's aggregate cache. The default key is computed here once: every header
    the endpoint reads (path parameters and the raw query string are always in it)."""
    if ep.cache is None:
        return None
    at = (*where, "cache")
    if ep.passthrough:
        problems.append(
            ConfigProblem(file, format_path(at), "a passthrough endpoint streams; it is not cached")
        )
        return None
    if ep.method not in ("GET", "HEAD"):
        problems.append(ConfigProblem(file, format_path(at), "only GET endpoints are cached"))
        return None
    if ep.cache.key is None:
        vary = tuple(sorted(name.encode("latin-1") for name in reads.headers))
        return EndpointCachePlan(ep.cache.ttl, None, reads, vary)
    key: list[tuple[str, str]] = []
    for ki, text in enumerate(ep.cache.key):
        source, _, name = text.partition(".")
        if source not in KEYED_SOURCES or not name:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*at, "key", ki)),
                    "must be path.NAME, query.NAME or header.NAME",
                )
            )
        elif source == "path" and name not in route.param_names:
            problems.append(
                ConfigProblem(
                    file, format_path((*at, "key", ki)), f"{ep.path} has no parameter {name!r}"
                )
            )
        elif source == "header" and not TOKEN.fullmatch(name):
            problems.append(
                ConfigProblem(file, format_path((*at, "key", ki)), "invalid header name")
            )
        else:
            key.append((source, name.lower() if source == "header" else name))
    named = frozenset(name.encode("latin-1") for source, name in key if source == "header")
    return EndpointCachePlan(
        ep.cache.ttl, tuple(key), reads, bypass_headers=CREDENTIAL_HEADERS - named
    )


def _upstream_hosts(
    up: UpstreamConfig,
    file: str,
    where: tuple[int | str, ...],
    problems: list[ConfigProblem],
) -> tuple[BaseUrl, ...]:
    """The upstream's hosts from ``url`` or ``urls``; () after recording a problem."""
    if (up.url is None) == (up.urls is None):
        problems.append(ConfigProblem(file, format_path(where), "give exactly one of url and urls"))
        return ()
    texts = (
        [(("url",), up.url)]
        if up.url is not None
        else list(((("urls", i), u) for i, u in enumerate(up.urls or [])))
    )
    hosts: list[BaseUrl] = []
    for key, text in texts:
        assert text is not None
        try:
            host = parse_base_url(text)
        except TemplateError as exc:
            problems.append(ConfigProblem(file, format_path((*where, *key)), str(exc)))
            return ()
        if hosts and (host.scheme, host.base_path) != (hosts[0].scheme, hosts[0].base_path):
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, *key)),
                    "every url of an upstream needs the same scheme and base path",
                )
            )
            return ()
        if host.origin in (h.origin for h in hosts):
            problems.append(ConfigProblem(file, format_path((*where, *key)), "listed twice"))
            return ()
        hosts.append(host)
    if up.host_header is not None:
        try:
            virtual = check_host_header(up.host_header)
        except TemplateError as exc:
            problems.append(ConfigProblem(file, format_path((*where, "host_header")), str(exc)))
            return ()
        hosts = [replace(h, virtual_host=virtual) for h in hosts]
    if up.client_cert is not None and up.client_key is not None:
        # part of each host's pool key: connections presenting this certificate carry only
        # the calls of upstreams that present the same one
        hosts = [replace(h, client_identity=(up.client_cert, up.client_key)) for h in hosts]
    return tuple(hosts)


def _retry_settings(retries: RetryConfig | None) -> RetrySettings | None:
    if retries is None:
        return None
    return RetrySettings(
        retries.attempts, retries.backoff, frozenset(retries.on), retries.budget, retries.unsafe
    )


def _breaker_settings(breaker: CircuitBreakerConfig | None) -> BreakerSettings | None:
    if breaker is None:
        return None
    return BreakerSettings(
        breaker.consecutive_failures,
        breaker.failure_ratio,
        breaker.window,
        breaker.min_requests,
        breaker.open_for,
        breaker.half_open_requests,
    )


def _bulkhead_settings(bulkhead: BulkheadConfig | None) -> BulkheadSettings | None:
    return BulkheadSettings(bulkhead.max_concurrent, bulkhead.queue_timeout) if bulkhead else None


def _hedge_settings(hedge: HedgeConfig | None) -> HedgeSettings | None:
    if hedge is None:
        return None
    if isinstance(hedge.after, str):
        return HedgeSettings(None, int(hedge.after[1:]), hedge.max)
    return HedgeSettings(hedge.after, None, hedge.max)


def _backend_guard(
    be: BackendConfig, upstream: UpstreamPlan
) -> tuple[GuardSettings | None, bool, bool]:
    """A backend's own resilience settings (set keys win, `null` included), or None when
    it sets none, with whether it has a breaker and a bulkhead of its own."""
    given = be.model_fields_set & {"retries", "hedge", "circuit_breaker", "bulkhead"}
    if not given:
        return None, False, False
    up = upstream.guard
    settings = GuardSettings(
        _retry_settings(be.retries) if "retries" in given else up.retry,
        _breaker_settings(be.circuit_breaker) if "circuit_breaker" in given else up.breaker,
        _bulkhead_settings(be.bulkhead) if "bulkhead" in given else up.bulkhead,
        _hedge_settings(be.hedge) if "hedge" in given else up.hedge,
    )
    return settings, "circuit_breaker" in given, "bulkhead" in given


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sends_clients_authorization(ep: EndpointPlan, be: BackendPlan) -> bool:
    """Whether a backend's calls may carry an ``Authorization`` of the client's, which keeps
    its cache from storing most replies (RFC 9111 section 3.5); one the config sets itself
    (a service token) does not."""
    return "authorization" in ep.forward_headers or any(
        name.lower() == "authorization" and template.refs for name, template in be.header_templates
    )


def risky_settings(plan: GatewayPlan) -> list[ConfigProblem]:
    """Settings that load but are probably mistakes; ``gateway check`` prints them."""
    file = plan.file
    warnings = []
    for name, up in plan.upstreams.items():
        if up.base.scheme == "http" and not all(_is_loopback(h.host) for h in up.all_hosts):
            warnings.append(
                ConfigProblem(
                    file,
                    format_path(("upstreams", name, "url")),
                    "warning: plain http to a host that is not loopback: "
                    "traffic and credentials cross the network unencrypted",
                )
            )
    for ep in plan.endpoints:
        for bi, be in enumerate(ep.backends):
            where = ("endpoints", ep.index, "backends", bi)
            if be.upstream is not None and not ep.passthrough and be.timeout_s > ep.deadline_s:
                timeout_from = _timeout_origin(plan.config, ep.index, bi, be.upstream.name)
                own = timeout_from == format_path((*where, "timeout"))
                warnings.append(
                    ConfigProblem(
                        file,
                        # the key the user wrote, or the backend that inherits the value
                        format_path((*where, "timeout") if own else where),
                        f"warning: timeout {format_duration(be.timeout_s)}"
                        + ("" if own else f" (from {timeout_from})")
                        + " is longer than the endpoint's deadline "
                        f"{format_duration(ep.deadline_s)} (from "
                        f"{_deadline_origin(plan.config, ep.index)}); the deadline always "
                        "cuts it first",
                    )
                )
            if be.cache is not None and _sends_clients_authorization(ep, be):
                warnings.append(
                    ConfigProblem(
                        file,
                        format_path((*where, "cache")),
                        "warning: its calls carry the client's Authorization "
                        "(forward_headers or a header template), so a reply is stored only "
                        "when the upstream allows it with s-maxage, public or must-revalidate "
                        "(RFC 9111 section 3.5); X-Gateway-Backends says "
                        "cache=not-stored-authorization when it does not",
                    )
                )
            if be.required and be.placement.has_default:
                warnings.append(
                    ConfigProblem(
                        file,
                        format_path((*where, "default")),
                        "warning: a required backend's default is never used "
                        "(its failure fails the request)",
                    )
                )
        warnings += graphql_warnings(file, ep.index, ep.backends)
        if ep.collections is not None:
            warnings += into_warnings(file, ep.index, ep.collections)
        if ep.cache is not None:
            warnings.extend(_cache_warnings(file, ep, ep.cache))
        if ep.cors is not None and ep.method not in ep.cors.methods:
            warnings.append(_cors_method_warning(file, plan.config, ep))
    return warnings


def _cors_method_warning(file: str, config: GatewayConfig, ep: EndpointPlan) -> ConfigProblem:
    """``allow_methods`` that leaves out the endpoint's own method: every preflight for it
    is refused, so browsers never send it cross-origin."""
    own = config.endpoints[ep.index].cors is not None
    at = ("endpoints", ep.index, "cors", "allow_methods") if own else ("endpoints", ep.index)
    return ConfigProblem(
        file,
        format_path(at),
        f"warning: {'' if own else 'defaults.'}cors.allow_methods leaves out the endpoint's "
        f"method {ep.method}: its preflights are refused",
    )


BUILT_IN = "the built-in default"


def _timeout_origin(config: GatewayConfig, ei: int, bi: int, upstream: str) -> str:
    """Where a backend's timeout comes from: the config key that sets it, or the built-in
    default (the order of :func:`_compile_backend` and the upstream plan)."""
    if config.endpoints[ei].backends[bi].timeout is not None:
        return format_path(("endpoints", ei, "backends", bi, "timeout"))
    if config.upstreams[upstream].timeout is not None:
        return format_path(("upstreams", upstream, "timeout"))
    return "defaults.timeout" if "timeout" in config.defaults.model_fields_set else BUILT_IN


def _deadline_origin(config: GatewayConfig, ei: int) -> str:
    """Where an endpoint's deadline comes from (see :func:`_timeout_origin`)."""
    if config.endpoints[ei].deadline is not None:
        return format_path(("endpoints", ei, "deadline"))
    return "defaults.deadline" if "deadline" in config.defaults.model_fields_set else BUILT_IN


def _cache_warnings(file: str, ep: EndpointPlan, cache: EndpointCachePlan) -> list[ConfigProblem]:
    """An explicit aggregate cache key that leaves out a value the endpoint reads (clients
    would share answers), and settings that make the cache miss every time."""
    at = ("endpoints", ep.index, "cache")
    warnings: list[ConfigProblem] = []
    if cache.key is not None:
        named = {f"{source}.{name}" for source, name in cache.key}
        missing = [name for name in cache.reads.names() if name not in named]
        if missing:
            warnings.append(
                ConfigProblem(
                    file,
                    format_path((*at, "key")),
                    f"warning: leaves out {', '.join(missing)}, which the endpoint reads: "
                    "requests that differ only there share one cached answer",
                )
            )
    for field_name in sorted(CREDENTIAL_HEADERS & cache.bypass_headers):
        name = field_name.decode("latin-1")
        if name in cache.reads.headers:
            warnings.append(
                ConfigProblem(
                    file,
                    format_path(at),
                    f"warning: the endpoint reads the client's {name} (a template, a when: "
                    f"condition or forward_headers) but cache.key does not name "
                    f"header.{name}: every request carrying it bypasses the cache",
                )
            )
    for bi, be in enumerate(ep.backends):
        if b"set-cookie" in be.return_headers:
            warnings.append(
                ConfigProblem(
                    file,
                    format_path(("endpoints", ep.index, "backends", bi, "return_headers")),
                    "warning: a response that sets a cookie is never stored in the endpoint's "
                    "cache",
                )
            )
    return warnings


NO_PATH = Template("", ())  # a graphql backend's without a path: the upstream's URL itself


@dataclass(frozen=True)
class _LeftOutNames:
    """What was left out of the document, and the names of the backends left out of this
    backend's endpoint (None: one had no usable name)."""

    parts: LeftOut
    backends: frozenset[str] | None

    def may_name(self, name: str, names: Mapping[str, int], route: RoutePattern) -> bool:
        """Whether a reference to ``name``, which is neither a path parameter nor a backend
        of the pruned endpoint, may be to a backend that was left out."""
        if name in names or name in route.param_names:
            return False
        return self.backends is None or name in self.backends


def _compile_backend(
    be: BackendConfig,
    where: tuple[int | str, ...],
    route: RoutePattern,
    names: Mapping[str, int],
    upstreams: Mapping[str, UpstreamPlan],
    config: GatewayConfig,
    endpoint: EndpointConfig,
    file: str,
    problems: list[ConfigProblem],
    *,
    left_out: _LeftOutNames | None = None,
    groups: Mapping[str, GroupSlot] | None = None,
) -> BackendPlan | None:
    before = len(problems)
    left_out = left_out or _LeftOutNames(LeftOut(), frozenset())

    def problem(key: str | tuple[int | str, ...], message: str) -> None:
        loc = (*where, *key) if isinstance(key, tuple) else (*where, key)
        problems.append(ConfigProblem(file, format_path(loc), message))

    if be.name in RESERVED_BACKEND_NAMES:
        problem("name", f"{be.name!r} is reserved for {{{be.name}.NAME}} references")
    elif be.name in route.param_names:
        problem("name", f"{be.name!r} is also a path parameter: {{{be.name}}} would be ambiguous")
    upstream = upstreams.get(be.upstream) if be.upstream is not None else None
    # an upstream that exists but failed to compile was reported already
    if be.upstream is None:
        if "static" not in be.model_fields_set:
            problem("upstream", "required key is missing")
    elif (
        upstream is None
        and be.upstream not in config.upstreams
        and not left_out.parts.upstream_left_out(be.upstream)
    ):
        known = ", ".join(sorted({*config.upstreams, *left_out.parts.upstreams})) or "none defined"
        problem("upstream", f"unknown upstream {be.upstream!r} (known: {known})")

    deps: list[int] = []

    def link(ref: Ref, key: str | tuple[int | str, ...]) -> Ref:
        grouped = link_group(ref, names.get(be.name, -1), names, groups or {})
        if grouped is not None:  # the group's merged value: after every one of its backends
            if isinstance(grouped, str):
                problem(key, grouped)
            else:
                deps.extend(m for m in (groups or {})[ref.name].plan.members if m not in deps)
            return ref if isinstance(grouped, str) else grouped
        if ref.kind in ("param", "backend") and left_out.may_name(ref.name, names, route):
            # a backend left out for problems of its own: fine once they are fixed
            return ref
        if ref.kind == "param":
            if ref.name in route.param_names:
                return ref
            if ref.name not in names:
                known = ", ".join(dict.fromkeys(route.param_names)) or "none"
                problem(key, f"unknown path parameter {ref.text} (the endpoint path has: {known})")
                return ref
            ref = replace(ref, kind="backend")
        if ref.kind != "backend":
            return ref
        if ref.name not in names:
            known = ", ".join(n for n in names if n != be.name) or "none"
            known += f"; groups: {', '.join(groups)}" if groups else ""
            problem(key, f"unknown backend in {ref.text} (other backends: {known})")
            return ref
        if ref.name == be.name:
            problem(key, f"{ref.text} refers to this backend itself")
            return ref
        index = names[ref.name]
        if index not in deps:
            deps.append(index)
        return replace(ref, index=index)

    url: Template | None = NO_PATH
    if be.path is not None:
        try:
            url = parse_url_template(be.path).with_refs(lambda r: link(r, "path"))
        except TemplateError as exc:
            url = None
            problem("path", str(exc))
    elif be.graphql is None and "static" not in be.model_fields_set:
        problem("path", "required key is missing")
    header_templates: list[tuple[str, Template]] = []
    for header_name, value in _check_headers(be.headers, file, (*where, "headers"), problems):
        header_key: tuple[int | str, ...] = ("headers", header_name)
        try:
            parsed = parse_template(value)
        except TemplateError as exc:
            problem(header_key, str(exc))
            continue
        header_templates.append(
            (header_name, parsed.with_refs(lambda r, k=header_key: link(r, k)))  # type: ignore[misc]
        )

    shape = compile_request_shape(
        be, endpoint, route.param_names, url or NO_PATH, header_templates, link, problem
    )

    conditions: list[Condition] = []
    whens = be.when if isinstance(be.when, list) else [be.when] if be.when else []
    for wi, when in enumerate(whens):
        key: tuple[int | str, ...] = ("when", wi) if isinstance(be.when, list) else ("when",)
        if (when.query is None) == (when.header is None):
            problem(key, "give exactly one of query and header")
            continue
        if when.equals is not None and when.in_ is not None:
            problem(key, "give at most one of equals and in")
            continue
        if when.query is not None:
            source, subject = "query", when.query
        else:
            source, subject = "header", (when.header or "").lower()
        conditions.append(
            Condition(
                source,
                subject,
                when.equals,
                frozenset(when.in_) if when.in_ is not None else None,
            )
        )

    return_headers: list[bytes] = []
    for hi, header in enumerate(be.return_headers):
        low = header.lower()
        if not TOKEN.fullmatch(header):
            problem(("return_headers", hi), "invalid header name")
        elif low in NEVER_RETURNED_STR or low.startswith(GATEWAY_PREFIX):
            problem(
                ("return_headers", hi), f"{header} is set by the gateway and cannot be returned"
            )
        else:
            return_headers.append(low.encode("latin-1"))

    transform = Transform()
    try:
        transform = Transform.compile(be.select, be.allow, be.deny, be.rename)
    except ValueError as combined:
        # compile each field alone, so the error names the key it is about
        found = len(problems)
        for key_name, args in (
            ("select", {"select": be.select}),
            ("allow", {"allow": be.allow}),
            ("deny", {"deny": be.deny}),
            ("rename", {"rename": be.rename}),
        ):
            try:
                Transform.compile(**args)
            except ValueError as exc:
                problem(key_name, str(exc))
        if len(problems) == found:  # each is fine alone: allow and deny together
            problem("allow", str(combined))
    if be.group is not None and not be.group:
        problem("group", "must not be empty")
    if endpoint.passthrough:
        for key_name in (
            "select",
            "allow",
            "deny",
            "rename",
            "group",
            "default",
            "when",
            "for_each",
            "body",
            "return_headers",
            "follow_redirects",
        ):
            if key_name in be.model_fields_set:
                problem(
                    key_name, "not used by a passthrough endpoint (the body is streamed unchanged)"
                )
        if deps:
            problem("path", "a passthrough backend cannot reference another backend")
    placement = Placement(be.name, be.required, be.group, backend_has_default(be), be.default)
    if shape.static:
        static = static_result(be.static, transform, problem)
        if len(problems) > before or url is None:
            return None
        return BackendPlan(
            name=be.name,
            upstream=None,
            method="GET",
            url=url,
            timeout_s=0.0,
            max_response_bytes=0,
            headers=(),
            header_templates=(),
            transform=transform,
            placement=placement,
            required=be.required,
            conditions=tuple(conditions),
            static=static,
        )
    if len(problems) > before or upstream is None or url is None:
        return None
    guard, own_breaker, own_bulkhead = _backend_guard(be, upstream)
    cache = None
    if be.cache is not None:
        if be.method != "GET" or endpoint.passthrough:
            problem("cache", "only GET calls of aggregated endpoints are cached")
            return None
        cache = BackendCachePlan(be.cache.ttl, be.cache.coalesce)
    return BackendPlan(
        name=be.name,
        upstream=upstream,
        method=shape.method,
        url=url,
        timeout_s=be.timeout if be.timeout is not None else upstream.timeout_s,
        max_response_bytes=upstream.max_response_bytes,
        # the backend's value of a field replaces the upstream's (RFC 9110 section 5.1:
        # one field, whatever the case of its name)
        headers=tuple(
            (k, v)
            for k, v in upstream.headers
            if k.lower() not in {name.lower() for name, _ in header_templates}
        ),
        header_templates=tuple(header_templates),
        transform=transform,
        placement=placement,
        required=be.required,
        deps=tuple(deps),
        conditions=tuple(conditions),
        for_each=be.for_each,
        max_calls=be.max_calls,
        on_item_error=be.on_item_error,
        body=shape.body,
        return_headers=frozenset(return_headers),
        follow_redirects=be.follow_redirects,
        max_redirects=be.max_redirects,
        guard=guard,
        own_breaker=own_breaker,
        own_bulkhead=own_bulkhead,
        guard_key=f"{upstream.name}@{endpoint.method} {endpoint.path}#{be.name}" if guard else "",
        cache=cache,
        payload=shape.payload,
        graphql=shape.graphql,
    )


def load_config(
    path: str, env: Mapping[str, str] | None = None, *, text: str | None = None
) -> GatewayPlan:
    """Read, validate and compile a config file.

    Raises:
        ConfigError: every problem found, each naming the file and the path inside it.
    """
    if text is None:
        text = read_config_file(path)
    document = load_document(text, path, env)
    if document.config is not None:
        return compile_config(document.config, path)
    problems = list(document.problems)
    if document.pruned is not None and document.salvage is not None:
        # the valid parts' cross-references, in the same run
        try:
            _compile(document.pruned, path, document.salvage.left_out)
        except ConfigError as exc:
            problems += [document.salvage.place(p) for p in exc.problems]
    raise ConfigError(problems)


def _listeners_overlap(admin: Listener, bind: str) -> bool:
    """Whether the admin listener would take the public one's port: the same port (a port
    0 asks for a free one and never overlaps), on the same address or a wildcard of either."""
    try:
        public = parse_listener(bind)
    except ValueError:
        return False  # the public bind is checked where it is used
    if admin.port == 0 or admin.port != public.port:
        return False
    return admin.host is None or public.host is None or admin.host == public.host
