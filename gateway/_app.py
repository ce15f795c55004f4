"""The ASGI app (Quart-Trio): thin I/O edge that routes and calls the core.

Routing is the gateway's own, on the raw path (see ``_urls``); Quart sees one catch-all
view plus the admin routes under ``/__gateway/``. One ``httpx.AsyncClient`` per worker is
opened at startup and closed at shutdown.
"""

from __future__ import annotations

import dataclasses
import gc
import http.cookiejar
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import httpx
import hypercorn.config
import orjson
import trio
import werkzeug.exceptions
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ._auth.rules import Identity
from ._call.context import CallContext
from ._compress import compressing
from ._config.compile import load_config
from ._config.plan import ADMIN_PREFIX, EndpointPlan, GatewayPlan
from ._config.reload import keep_restart_only
from ._cors import answer_preflight, endpoint_fields
from ._endpoint import (
    ambiguous_framing,
    build_context,
    check_auth,
    check_limits,
    check_rate_limits,
    request_error_body,
    send_auth_refusal,
    send_error,
    send_framing_error,
    serve_aggregate,
)
from ._errors import (
    AuthError,
    ConfigError,
    HeadersTooLarge,
    InvalidRequest,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    RequestBodyTooLarge,
    RequestError,
    RequestTimeout,
    UrlTooLong,
)
from ._h2streams import install as install_h2_guard
from ._observability import metrics as metrics
from ._observability.logs import AccessRecord, log_access
from ._observability.otel import SpanExporter
from ._observability.tracing import CURRENT, trace_context, with_request_id
from ._passthrough import PassthroughAborted, open_passthrough, request_body_headers
from ._rules.admin import (
    ADMIN_ROUTES,
    Listener,
    admin_refusal,
    admin_route_error,
    off_admin_listener,
    parse_listener,
)
from ._rules.aggregate import Outcome, error_body
from ._rules.balance import HostSet
from ._rules.forwarded import believed_client
from ._rules.resilience import GuardSettings, UpstreamGuard
from ._rules.urls import BaseUrl
from ._sendbounds import bound_sends, bounds_of
from ._state.shared import SharedState, open_state
from ._upstream.transport import GatewayTransport, PoolKey, PoolLimits
from ._websocket import Relays, serve_websocket
from ._wsstream import install as install_relay_stream

if TYPE_CHECKING:  # imported when a JWT policy is configured (see build_authenticators)
    from ._auth.jwks import KeySet
    from ._auth.policy import JwtVerifier

JSON_TYPE = "application/json"
MAX_JWKS_BYTES = 1024 * 1024  # a key set is a few KiB; a bigger answer is not one


class JwksFetchFailed(Exception):
    """A key set fetch that did not give a key set document (the key set keeps its keys)."""


log = logging.getLogger("gateway")


class _NoCookies(http.cookiejar.CookieJar):
    """The shared client serves every user: it must never keep an upstream's cookies."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return

    def extract_cookies(self, response: Any, request: Any) -> None:
        return


def tune_gc() -> None:
    """Objects alive at startup (modules, the compiled config) never become garbage:
    freeze them out of the collector so full collections do not walk them again.

    Raising the collection thresholds was measured too: no clear latency gain, and
    more memory held between collections under load, so the defaults stay."""
    gc.collect()
    gc.freeze()


MASK = "***"
# ASGI scope key: (RouteMatch, GatewayPlan, AccessRecord | None, Identity | None) of a
# passthrough request
ROUTED = "gateway.routed"


def build_guards(plan: GatewayPlan, previous: dict[str, UpstreamGuard]) -> dict[str, UpstreamGuard]:
    """Resilience state per upstream (and per backend with settings of its own); kept
    across reloads where the settings and hosts are unchanged."""
    guards: dict[str, UpstreamGuard] = {}
    for name, up in plan.upstreams.items():
        old = previous.get(name)
        hosts = up.all_hosts
        same_hosts = old is not None and old.bases == (hosts if len(hosts) > 1 else ())
        if (
            old is not None
            and old.settings == up.guard
            and same_hosts
            and (
                old.hosts is None
                or (old.hosts.balance, old.hosts.outlier) == (up.balance, up.outlier)
            )
        ):
            guards[name] = old
        elif up.guard.any or len(hosts) > 1:
            host_set = (
                HostSet(tuple(h.origin for h in hosts), up.balance, up.outlier)
                if len(hosts) > 1
                else None
            )
            guards[name] = UpstreamGuard.build(up.guard, host_set, hosts if host_set else ())
    for endpoint in plan.endpoints:
        for backend in endpoint.backends:
            if backend.guard is None or backend.upstream is None:
                continue
            base = guards.get(backend.upstream.name) or UpstreamGuard.build(GuardSettings())
            old = previous.get(backend.guard_key)
            if (
                old is not None
                and old.settings == backend.guard
                and old.budget is base.budget
                and _shares(old.breaker, base.breaker, own=backend.own_breaker)
                and _shares(old.limiter, base.limiter, own=backend.own_bulkhead)
            ):
                guards[backend.guard_key] = old
            else:
                guards[backend.guard_key] = base.for_backend(
                    backend.guard, backend.own_breaker, backend.own_bulkhead
                )
    return guards


def build_authenticators(
    plan: GatewayPlan, key_sets: dict[tuple[str, str, float], KeySet]
) -> dict[str, JwtVerifier]:
    """The verifier of every JWT policy an endpoint uses, by policy name. ``key_sets`` (by
    :func:`~._auth.policy.key_set_id`) is updated in place: a key set of an unchanged
    ``jwks_url`` policy is kept across a reload with its keys, new ones are added (the app
    starts their fetching), and those no policy uses any more are removed."""
    verifiers: dict[str, JwtVerifier] = {}
    wanted: set[tuple[str, str, float]] = set()
    if any(
        policy.kind == "jwt"
        for endpoint in plan.endpoints
        if endpoint.auth is not None
        for policy in endpoint.auth.policies
    ):
        # imported here: PyJWT and cryptography are a tenth more objects for the collector
        # to walk, which a gateway without JWT policies should not pay for
        from ._auth.jwks import KeySet
        from ._auth.policy import JwtVerifier, key_set_id
    for endpoint in plan.endpoints:
        if endpoint.auth is None:
            continue
        for policy in endpoint.auth.policies:
            if policy.kind != "jwt" or policy.name in verifiers:
                continue
            ident = key_set_id(policy)
            key_set = None
            if ident is not None:
                wanted.add(ident)
                key_set = key_sets.get(ident)
                if key_set is None:
                    key_set = key_sets[ident] = KeySet(policy.name)
            verifiers[policy.name] = JwtVerifier(policy, key_set)
    for ident in set(key_sets) - wanted:
        del key_sets[ident]
    return verifiers


def _shares(mine: object, upstreams: object, *, own: bool) -> bool:
    """Whether a kept backend guard's breaker (or bulkhead) is still what it should be:
    its own (or none), or the upstream's."""
    return (mine is None or mine is not upstreams) if own else mine is upstreams


def _with_headers(
    send: Any, fields: Sequence[tuple[bytes, bytes]], dropped: frozenset[bytes] = frozenset()
) -> Any:
    """``send`` that takes the fields named in ``dropped`` (lower-case) out of the
    response head and adds ``fields``."""

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            kept = message.get("headers", [])
            if dropped:
                kept = [(n, v) for n, v in kept if n.lower() not in dropped]
            message = {**message, "headers": [*kept, *fields]}
        await send(message)

    return sending


def _finishing_shielded(send: Any) -> Any:
    """``send`` whose last message (the body without ``more_body``) cannot be cancelled.

    Sending it is where the server starts the connection's keep-alive idle timer: hypercorn
    recycles the HTTP/1.1 connection inside that call, first telling the app
    ``http.disconnect`` (which ends Quart-Trio's reader task, which cancels the request's
    nursery), then restarting its idle task behind a lock, a checkpoint. Unshielded, that
    checkpoint raises Cancelled and the idle timer is never started: the kept-alive
    connection is then never idle, so neither the keep-alive timeout nor a shutdown closes
    it (a shutdown waits the whole ``graceful_timeout``). Nothing in the call blocks
    unshielded: the socket write is shielded by the server already, the rest are a memory
    channel and locks held for an instant."""

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with trio.CancelScope(shield=True):
                await send(message)
        else:
            await send(message)

    return sending


# what Quart and werkzeug raise, as the gateway's own errors (stable codes)
_REFUSALS: dict[int, type[RequestError]] = {
    400: InvalidRequest,
    404: NotFound,
    408: RequestTimeout,
    413: RequestBodyTooLarge,
    414: UrlTooLong,
    431: HeadersTooLarge,
}

_MESSAGES: dict[type[RequestError], str] = {
    NotFound: "no endpoint at this path",
    RequestBodyTooLarge: "request body too large",
}


def refusal_of(exc: HTTPException) -> RequestError | None:
    """The gateway's error for an exception of Quart's or werkzeug's; None for a 5xx (a
    failure of the gateway, not a refusal of the request). A 405 lists the route's
    methods in ``allow``, HEAD wherever GET is (RFC 9110 sections 9.3.2, 15.5.6)."""
    status = exc.code or 500
    if isinstance(exc, werkzeug.exceptions.MethodNotAllowed):
        allow = set(exc.valid_methods or ()) - {"OPTIONS"}
        if "GET" in allow:
            allow.add("HEAD")
        return MethodNotAllowed("method not allowed here", allow=tuple(sorted(allow)))
    if status >= 500:
        return None
    kind = _REFUSALS.get(status)
    if kind is None:
        refusal = InvalidRequest(exc.description or "invalid request")
        refusal.status = status  # keeps werkzeug's 4xx, with the gateway's code
        return refusal
    message = _MESSAGES.get(kind) or exc.description or kind.code.replace("_", " ")
    return kind(message)


async def send_options(
    send: Any, allow: Sequence[str], fields: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """The answer to ``OPTIONS`` on a routed path without CORS: 204 with ``Allow`` (RFC
    9110 section 9.3.7) and ``fields``, no upstream called."""
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"allow", ", ".join(allow).encode("ascii")), *fields],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def shared_fields(
    plan: GatewayPlan, raw_path: str, methods: Sequence[str]
) -> tuple[tuple[bytes, bytes], ...]:
    """The ``response_headers`` fields of the endpoints at a path (one per method of
    ``methods``) when they all have the same ones, as a CORS preflight's answer has its
    endpoint's; none when they differ, since the answer is no one endpoint's."""
    found: dict[frozenset[tuple[bytes, bytes]], tuple[tuple[bytes, bytes], ...]] = {}
    for method in methods:
        try:
            fields = plan.router.match(raw_path, method).target.configured_fields
        except RequestError:
            continue
        found.setdefault(frozenset((n.lower(), v) for n, v in fields), fields)
    return next(iter(found.values())) if len(found) == 1 else ()


def server_methods(plan: GatewayPlan) -> tuple[str, ...]:
    """The methods some endpoint of ``plan`` allows, HEAD wherever GET is, and OPTIONS."""
    methods = {endpoint.method for endpoint in plan.endpoints}
    if "GET" in methods:
        methods.add("HEAD")
    return (*sorted(methods), "OPTIONS")


def masked_config(plan: GatewayPlan) -> dict[str, Any]:
    """The config as JSON with every header value and every auth secret masked: that is
    where secrets live."""
    data: dict[str, Any] = plan.config.model_dump(mode="json", by_alias=True)
    for upstream in data.get("upstreams", {}).values():
        upstream["headers"] = dict.fromkeys(upstream.get("headers", {}), MASK)
    for endpoint in data.get("endpoints", []):
        for backend in endpoint.get("backends", []):
            backend["headers"] = dict.fromkeys(backend.get("headers", {}), MASK)
    for policy in data.get("auth", {}).values():
        jwt = policy.get("jwt") or {}
        if jwt.get("secret") is not None:
            jwt["secret"] = MASK  # an HMAC secret signs tokens: whoever reads it can mint them
    redis = data.get("state", {}).get("redis")
    if redis:
        parts = urlsplit(redis)
        if parts.password is not None:  # redis://user:PASSWORD@host:port/db
            netloc = f"{parts.username or ''}:{MASK}@{parts.netloc.rpartition('@')[2]}"
            data["state"]["redis"] = parts._replace(netloc=netloc).geturl()
    return data


def pool_limits(plan: GatewayPlan) -> dict[PoolKey, PoolLimits]:
    """Each upstream pool's settings, by origin and client identity (the config check
    makes upstreams sharing a pool agree on them)."""
    return {
        host.key: PoolLimits(
            max_connections=up.max_connections,
            idle_timeout_s=up.idle_timeout_s,
            ca_file=up.ca_file,
            server_name=host.server_name if host.virtual_host is not None else None,
        )
        for up in plan.upstreams.values()
        for host in up.all_hosts
    }


def make_client(plan: GatewayPlan) -> httpx.AsyncClient:
    """The worker's upstream client: our transport, no env proxies, no redirects, no cookies.

    Timeouts are trio cancel scopes around each call, not httpx's per-operation ones.
    """
    return httpx.AsyncClient(
        transport=GatewayTransport(pool_limits(plan), on_change=metrics.connections_changed),
        trust_env=False,
        follow_redirects=False,
        timeout=None,
        cookies=_NoCookies(),
    )


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(with_request_id(body)), status=status, headers=headers, content_type=JSON_TYPE
    )


def error_response(exc: RequestError) -> Response:
    headers = {"Allow": ", ".join(exc.allow)} if exc.allow else None
    return json_response(request_error_body(exc), exc.status, headers)


class GatewayApp(QuartTrio):
    """A Quart-Trio app serving one :class:`GatewayPlan`."""

    def __init__(self, plan: GatewayPlan) -> None:
        super().__init__("gateway")
        self.plan = plan
        self._client: httpx.AsyncClient | None = None
        self._transport: GatewayTransport | None = None
        self.config.update(
            MAX_CONTENT_LENGTH=plan.config.server.max_request_body,
            # Quart's RESPONSE_TIMEOUT would cut long passthrough downloads; our own
            # timeouts bound every wait instead (see _passthrough).
            RESPONSE_TIMEOUT=None,
            BODY_TIMEOUT=None,
        )
        self.url_map.merge_slashes = False
        self.url_map.strict_slashes = False
        self.before_serving(self._open_client)
        self.before_serving(self._open_state)
        self.before_serving(self._open_key_sets)
        self.after_serving(self._close_client)
        self.draining = False
        self.loaded_at = time.time()
        self.exporter: SpanExporter | None = None
        self.guards: dict[str, UpstreamGuard] = build_guards(plan, {})
        # jwks_url policies' key sets, fetched by tasks of the app's nursery while serving
        self.key_sets: dict[tuple[str, str, float], KeySet] = {}
        self._key_set_scopes: dict[tuple[str, str, float], trio.CancelScope] = {}
        self._serving_key_sets = False
        self.authenticators: dict[str, JwtVerifier] = build_authenticators(plan, self.key_sets)
        self.state: SharedState | None = None  # open while serving (rate limits, caches)
        # read at startup only: the listening sockets outlive a reload
        self.admin_listener: Listener | None = plan.admin_listener
        # the serving hypercorn settings, set by serve_app: a reload updates some in place
        self.listener_config: hypercorn.config.Config | None = None
        # open WebSocket relays, and their close at the end of a drain
        self.relays = Relays()
        install_relay_stream()  # hypercorn's WebSocket stream, with close codes and pings
        install_h2_guard()  # DATA on a closed HTTP/2 stream must not stop the server
        for name in ADMIN_ROUTES:
            # no automatic OPTIONS (an HTML-less 200): the gateway answers 405 for it
            self.add_url_rule(
                f"{ADMIN_PREFIX}/{name}",
                name,
                getattr(self, f"_{name}"),
                methods=["GET"],
                provide_automatic_options=False,
            )
        # Endpoint routing is ours, on the raw path, before Quart's router (which decodes
        # the path first and would turn an encoded slash into a routing 404).
        self.before_request(self._dispatch)
        self.register_error_handler(HTTPException, self._http_error)

    async def asgi_app(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self._asgi(scope, receive, send, None)
            return
        trace = trace_context(scope["headers"])
        if self.exporter is not None:
            # the server span's ids become the request's; backend spans are its children
            parent = (
                (trace.trace_id, trace.parent_span_id, trace.flags)
                if trace.parent_span_id is not None
                else None
            )
            span = self.exporter.start_request(f"{scope.get('method', 'GET')} request", parent)
            trace_id, span_id, flags = self.exporter.ids(span)
            trace = dataclasses.replace(
                trace,
                trace_id=trace_id,
                span_id=span_id,
                flags=flags,
                span=span,
                exporter=self.exporter,
            )
        token = CURRENT.set(trace)
        client = scope.get("client")
        record = AccessRecord(
            trace.request_id.decode(),
            # one believed address on every line, whatever the outcome (even a request
            # refused before routing)
            believed_client(
                client[0] if client else None, scope["headers"], self.plan.trusted_proxies
            ),
            scope.get("method", "GET"),  # a WebSocket upgrade is a GET
            (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        )

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name.lower() == b"x-gateway-backends":
                        record.backends_header = value.decode("latin-1")
                headers.append((b"x-request-id", trace.request_id))
                if self.draining and scope.get("http_version") in ("1.0", "1.1"):
                    # The listener closes at the end of drain_delay and idle keep-alive
                    # connections with it, racing the client's next request on them: a
                    # client told to close reconnects instead (RFC 9112 section 9.6).
                    # HTTP/2 forbids the field (RFC 9113 section 8.2.2); it has GOAWAY.
                    headers.append((b"connection", b"close"))
                record.status = message["status"]
                message = {**message, "headers": headers}
            await send(message)

        # a WebSocket is not a request in flight (it may stay open for hours):
        # gateway_websockets_open counts the open ones
        websocket = kind == "websocket"
        if not websocket:
            metrics.IN_FLIGHT.inc()
        try:
            if websocket:
                await self._websocket(scope, receive, send, record, trace.request_id)
            else:
                await self._asgi(scope, receive, send_with_id, record)
        finally:
            CURRENT.reset(token)
            if not websocket:
                metrics.IN_FLIGHT.dec()
            log_access(record)
            if record.websocket is None:  # an accepted upgrade was counted when it was
                metrics.observe_request(
                    record.endpoint, record.method, record.status, record.elapsed_s, record.timings
                )
            if trace.span is not None:
                name = "WEBSOCKET" if websocket else record.method
                trace.span.update_name(f"{name} {record.endpoint or 'unmatched'}")
                trace.span.set_attribute("http.response.status_code", record.status)
                trace.span.set_attribute("gateway.request_id", record.request_id)
                trace.span.end()

    async def _websocket(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        record: AccessRecord,
        request_id: bytes,
    ) -> None:
        """A WebSocket scope: its upgrade is answered (refused, or accepted and relayed) by
        :func:`~gateway._websocket.serve_websocket`, with the request id on the answer."""

        async def send_with_id(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "websocket.http.response.start" or kind == "websocket.accept":
                headers = [*message.get("headers", ()), (b"x-request-id", request_id)]
                if kind == "websocket.http.response.start":
                    record.status = message["status"]
                message = {**message, "headers": headers}
            await send(message)

        await serve_websocket(self, scope, receive, send_with_id, record)

    async def _asgi(self, scope: Any, receive: Any, send: Any, record: AccessRecord | None) -> None:
        plan = self.plan  # the whole request runs on the config it started with
        if scope["type"] == "http":
            if ambiguous_framing(scope):
                await send_framing_error(send, head=scope["method"] == "HEAD")
                return
            raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            admin_path = raw_path.startswith(ADMIN_PREFIX + "/")
            refusal = self._admin_refusal(scope, admin_path, plan)
            if refusal is None and admin_path:
                # answered here, as JSON with Allow, rather than by Quart's router
                refusal = admin_route_error(scope["path"], scope["method"])
            if refusal is not None:
                await send_error(send, refusal, head=scope["method"] == "HEAD")
                return
            if raw_path == "*" and scope["method"] == "OPTIONS":
                # the server in general (RFC 9110 section 9.3.7): what some endpoint allows
                await send_options(send, server_methods(plan))
                return
            if not admin_path:
                try:
                    server = plan.config.server
                    check_limits(scope, server.max_url_length, server.max_header_size)
                    if scope["method"] == "OPTIONS" and await answer_preflight(
                        plan, raw_path, scope["headers"], send, record
                    ):
                        return  # a CORS preflight: before auth and rate limits
                    match = plan.router.match(raw_path, scope["method"])
                except MethodNotAllowed as exc:
                    # the gateway answers OPTIONS on every routed path itself (RFC 9110
                    # section 9.3.7), so Allow names it too
                    allow = tuple(dict.fromkeys((*exc.allow, "OPTIONS")))
                    if scope["method"] == "OPTIONS":
                        shared = shared_fields(plan, raw_path, exc.allow)
                        await send_options(send, allow, shared)
                    else:
                        refusal = MethodNotAllowed(exc.message, allow=allow)
                        await send_error(send, refusal, head=scope["method"] == "HEAD")
                    return
                except RequestError as exc:
                    await send_error(send, exc, head=scope["method"] == "HEAD")
                    return
                if record is not None:
                    record.endpoint = match.target.path
                added = match.target.response_fields
                if match.target.cors is not None:  # and the fields for the request's Origin
                    added = endpoint_fields(match.target, scope["headers"])
                not_acceptable: NotAcceptable | None = None
                if match.target.compression is not None:
                    # installed first, so it sees the head as configured fields leave it;
                    # a 406 it sends instead of a response gets the same fields
                    removed = match.target.removed_fields

                    async def refuse(inner: Any, error: NotAcceptable) -> None:
                        await send_error(_with_headers(inner, added, removed), error)

                    send, not_acceptable = compressing(
                        send, match.target.compression, scope, refuse
                    )
                if added or match.target.removed_fields:
                    # remove_headers, and response_headers replacing a field of their name
                    send = _with_headers(send, added, match.target.removed_fields)
                if not_acceptable is not None:
                    # RFC 9110 section 12.5.3: before auth, rate limits and upstream calls
                    await send_error(send, not_acceptable, head=scope["method"] == "HEAD")
                    return
                # the order of the request's layers: route, authenticate, rate-limit, call
                identity: Identity | None = None
                if match.target.auth is not None:
                    try:
                        identity = await check_auth(
                            match.target, scope, self.transport.send, self.authenticators, record
                        )
                    except AuthError as exc:
                        await send_auth_refusal(send, exc, head=scope["method"] == "HEAD")
                        return
                if match.target.rate_limits and self.state is not None:
                    fields, refusal = await check_rate_limits(
                        self.state, plan, match, scope, identity
                    )
                    if refusal is not None:
                        await send_error(
                            send, refusal, head=scope["method"] == "HEAD", headers=fields
                        )
                        return
                    send = _with_headers(send, fields)
                if not match.target.passthrough:
                    await serve_aggregate(
                        self.transport.send,
                        plan,
                        match,
                        scope,
                        receive,
                        send,
                        record,
                        self.guards,
                        self.state,
                        identity,
                    )
                    return
                # passthrough is served through Quart (request body streaming); it reuses
                # this match (and the identity) instead of routing again
                scope[ROUTED] = (match, plan, record, identity)
            # Quart-Trio cancels the request's nursery as the last body is sent
            send = _finishing_shielded(send)
        try:
            await super().asgi_app(scope, receive, send)
        except* PassthroughAborted as group:
            # Returning with the body unfinished makes the server close the connection:
            # the client can tell the response is incomplete. Not a server error.
            for aborted in group.exceptions:
                log.warning("passthrough %s aborted: %s", scope.get("path"), aborted)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the app is not serving: its upstream client is not open")
        return self._client

    @property
    def transport(self) -> GatewayTransport:
        """The client's transport: the aggregated hot path sends through it directly,
        skipping httpx's auth, redirect and cookie layers (all disabled for us anyway)."""
        if self._transport is None:
            raise RuntimeError("the app is not serving: its upstream client is not open")
        return self._transport

    async def _open_client(self) -> None:
        tune_gc()
        self._client = make_client(self.plan)
        tracing = self.plan.config.tracing
        if tracing is not None:
            self.exporter = SpanExporter(tracing.otlp_endpoint, tracing.service_name)
        transport = self._client._transport
        assert isinstance(transport, GatewayTransport)
        self._transport = transport

    async def _open_key_sets(self) -> None:
        self._serving_key_sets = True
        self._run_key_sets()

    def _run_key_sets(self) -> None:
        """Start fetching every key set not fetched yet; stop those no policy uses."""
        if not self._serving_key_sets:
            return  # not serving yet: _open_key_sets starts them
        for ident in set(self._key_set_scopes) - set(self.key_sets):
            self._key_set_scopes.pop(ident).cancel()
        for ident, key_set in self.key_sets.items():
            if ident not in self._key_set_scopes:
                scope = self._key_set_scopes[ident] = trio.CancelScope()
                self.nursery.start_soon(self._keep_key_set, key_set, ident, scope)

    async def _keep_key_set(
        self, key_set: KeySet, ident: tuple[str, str, float], scope: trio.CancelScope
    ) -> None:
        _, url, refresh_s = ident

        async def fetch() -> bytes:
            # over the gateway's own transport; KeySet bounds each fetch with its deadline
            async with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise JwksFetchFailed(f"{url} answered {response.status_code}")
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksFetchFailed(f"{url}: the key set is over {MAX_JWKS_BYTES} bytes")
                return body

        with scope:
            await key_set.run(fetch, refresh_s)

    def keys_missing(self) -> list[str]:
        """The JWT policies whose key set has not loaded yet (their tokens are refused)."""
        return sorted(ks.name for ks in self.key_sets.values() if not ks.loaded)

    async def _open_state(self) -> None:
        await self.nursery.start(self._run_state)

    async def _run_state(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Holds the state store open for the app's whole life. A task of the lifespan's
        nursery (Quart's ``app.nursery``) on purpose: a Redis store's connection tasks
        are its children, and shutdown cancels that nursery, which closes them."""
        try:
            async with open_state(self.plan.config.state) as state:
                self.state = state
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.state = None

    async def _state(self) -> Response:
        """The rate-limit and cache store, and the coalescer of identical backend calls."""
        if self.state is None:
            return json_response({"store": None})
        return json_response(
            {
                "store": {
                    "kind": "redis" if self.state.shared else "memory",
                    "failing": self.state.failing,
                    **vars(self.state.store.statistics()),
                },
                "coalescer": vars(self.state.flights.statistics()),
            }
        )

    async def _close_client(self) -> None:
        if self.exporter is not None:
            # flushes the spans still queued; a blocking call, at shutdown only
            await trio.to_thread.run_sync(self.exporter.shutdown)
            self.exporter = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._transport = None

    async def _health(self) -> Response:
        """Liveness: the worker answers. Never touches upstreams."""
        return json_response({"status": "ok"})

    def reload(self) -> bool:
        """Load the config file again. A config that fails validation is refused (the
        reason is logged) and the old one keeps serving. Requests already running finish
        on the plan they started with; pools of unchanged upstreams keep their connections.
        Settings read only at start keep their value in effect, each logged as needing a
        restart (see :mod:`gateway._config.reload`).
        """
        try:
            plan = load_config(self.plan.file)
        except ConfigError as exc:
            log.error("reload refused, still serving the previous config: %s", exc)
            return False
        listener = self.listener_config
        config, pending = keep_restart_only(
            self.plan.config, plan.config, live_listener=listener is not None
        )
        for setting in pending:
            # the plan keeps the value in effect, so /__gateway/config shows what runs
            log.warning("%s: changes take effect on restart; the current value is kept", setting)
        # the listening sockets outlive a reload: so does the admin listener's address
        plan = dataclasses.replace(plan, config=config, admin_listener=self.plan.admin_listener)
        if listener is not None:
            # hypercorn reads these when a connection opens and when it shuts down
            listener.graceful_timeout = config.server.graceful_timeout
            if bounds_of(listener) is not None:
                bound_sends(listener, config.server.send_timeout)
            listener.h11_max_incomplete_size = config.server.max_header_size
        self.config["MAX_CONTENT_LENGTH"] = config.server.max_request_body
        if self._transport is not None:
            self._transport.reconfigure(pool_limits(plan))
        self.guards = build_guards(plan, self.guards)
        self.authenticators = build_authenticators(plan, self.key_sets)
        self.plan = plan
        self._run_key_sets()
        self.loaded_at = time.time()
        for warning in plan.warnings:
            log.warning("%s", warning)
        log.info("reloaded %s: %d endpoint(s)", plan.file, len(plan.endpoints))
        return True

    async def _upstreams(self) -> Response:
        """Each upstream's circuit breaker, retry budget, bulkhead, hosts and connection
        pools, as JSON; backends with settings of their own are listed under it."""
        now = trio.current_time()
        transport = self._transport

        def pool(host: BaseUrl) -> dict[str, Any] | None:
            # by pool key: one origin may have several pools, one per client certificate
            stats = transport.statistics_of(host.key) if transport is not None else None
            return vars(stats) if stats is not None else None

        body: dict[str, Any] = {}
        for name, up in self.plan.upstreams.items():
            entry: dict[str, Any] = self.guards[name].statistics(now) if name in self.guards else {}
            if len(up.all_hosts) == 1:
                entry["pool"] = pool(up.base)
            else:
                entry["pools"] = {h.origin: pool(h) for h in up.all_hosts}
            entry["backends"] = {
                backend.guard_key.partition("@")[2]: self.guards[backend.guard_key].statistics(now)
                for endpoint in self.plan.endpoints
                for backend in endpoint.backends
                if backend.guard_key in self.guards
                and backend.upstream is not None
                and backend.upstream.name == name
            }
            body[name] = entry
        return json_response(body)

    async def _config(self) -> Response:
        """The active config, header values masked, and when it was loaded."""
        return json_response(
            {
                "file": self.plan.file,
                "loaded_at": datetime.fromtimestamp(self.loaded_at, UTC).isoformat(),
                "config": masked_config(self.plan),
            }
        )

    def _admin_refusal(
        self, scope: dict[str, Any], admin_path: bool, plan: GatewayPlan
    ) -> RequestError | None:
        """Private admin routes only to ``admin_allow`` and on the admin listener; the admin
        listener serves nothing else."""
        local = scope.get("server")
        if not admin_path:
            if off_admin_listener(local, self.admin_listener):
                return NotFound("no endpoint at this path")
            return None
        return admin_refusal(
            scope["path"], scope.get("client"), local, plan.admin_allow, self.admin_listener
        )

    def listening(self, binds: Sequence[str], urls: Sequence[str]) -> None:
        """Learn the admin listener's bound port (``server.admin_bind`` may ask for port 0)
        from hypercorn's ``binds`` and the ``urls`` it reported, one per bind, in order."""
        admin_bind = self.plan.config.server.admin_bind
        if (
            self.admin_listener is None
            or admin_bind is None
            or admin_bind not in binds
            or len(urls) != len(binds)
        ):
            return
        # the last: hypercorn_config appends it after the public bind, which may be equal
        index = len(binds) - 1 - list(reversed(binds)).index(admin_bind)
        bound = parse_listener(urls[index].split("://", 1)[-1])
        self.admin_listener = Listener(self.admin_listener.host, bound.port)

    async def _metrics(self) -> Response:
        """Prometheus exposition of this worker (of all workers in multiprocess mode)."""
        body, content_type = metrics.render()
        return Response(body, status=200, content_type=content_type)

    async def _ready(self) -> Response:
        """Readiness: 200 while serving, 503 once draining (or before the client is open)."""
        if self.draining or self._client is None:
            return json_response({"status": "draining" if self.draining else "starting"}, 503)
        missing = self.keys_missing()
        if missing:
            # every token of these policies is refused until their keys arrive
            return json_response({"status": "waiting_for_keys", "auth_keys_missing": missing}, 503)
        return json_response({"status": "ready"})

    async def _http_error(self, exc: HTTPException) -> Response:
        """Whatever Quart or werkzeug would answer with a page of their own (a routing
        miss, a body too large, a view that failed), as the gateway's JSON error body.
        Admin routing is checked before Quart routes (``admin_route_error``): this is the
        fallback."""
        refusal = refusal_of(exc)
        if refusal is not None:
            return error_response(refusal)
        # a failure of the gateway itself (an admin view that raised), logged by Quart
        return json_response(error_body(Outcome.INTERNAL_ERROR, "internal error"), exc.code or 500)

    async def _dispatch(self) -> Response | None:
        scope = cast(dict[str, Any], request.scope)
        routed = scope.get(ROUTED)
        if routed is None:
            return None  # the admin routes, routed by Quart
        match, plan, record, identity = routed
        endpoint = match.target
        try:
            # the worker's guards: passthrough calls have a breaker, bulkhead and hosts too
            ctx = build_context(
                endpoint,
                match.params,
                scope,
                None,
                plan.trusted_proxies,
                self.guards,
                identity=identity,
            )
        except RequestError as exc:
            return error_response(exc)
        return await self._passthrough(endpoint, ctx, scope, record)

    async def _passthrough(
        self,
        endpoint: EndpointPlan,
        ctx: CallContext,
        scope: dict[str, Any],
        record: AccessRecord | None = None,
    ) -> Response:
        body_headers, has_body = request_body_headers(scope["headers"])
        body: AsyncIterator[bytes] | None = request.body.__aiter__() if has_body else None
        try:
            result = await open_passthrough(
                self.client,
                endpoint,
                ctx,
                request.method,
                body,
                body_headers,
                self.plan.config.server.max_request_body,
            )
        except RequestError as exc:
            return error_response(exc)
        if result.body is None:
            if record is not None:
                record.backends = {
                    endpoint.backends[0].name: {"outcome": result.outcome, "reason": result.detail}
                }
            body_json = error_body(
                "upstream_failed",
                f"passthrough backend failed: {result.outcome}",
                {endpoint.backends[0].name: result.outcome},
            )
            return json_response(
                body_json,
                result.status,
                {
                    "X-Gateway-Complete": "false",
                    "X-Gateway-Backends": result.backends_header,
                    "Cache-Control": "no-store",  # as for every aggregated error
                },
            )
        response = Response(result.body, status=result.status)
        response.headers.clear()
        for name, value in result.headers:
            response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        response.headers["X-Gateway-Backends"] = result.backends_header
        return response


def create_app(plan: GatewayPlan) -> GatewayApp:
    """The ASGI application for a compiled config."""
    return GatewayApp(plan)
