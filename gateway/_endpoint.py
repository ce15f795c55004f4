"""Serving aggregated endpoints straight on ASGI (the hot path).

Aggregated endpoints are answered here without going through Quart's request machinery
(context push, werkzeug routing, response wrappers), which measured as a fifth of the
per-request cost. Quart keeps the admin routes and passthrough endpoints.

Like quart-trio, every request runs in its own nursery with a task that watches for
``http.disconnect``: a client that leaves cancels the request, and with it every upstream
call it started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
import trio

from ._auth.gate import authenticate
from ._auth.rules import Identity
from ._call.context import CallContext
from ._call.exchange import ByteBudget, Sender
from ._call.request import check_client_values, check_schemas
from ._compress import HEAD_CONTENT
from ._config.plan import EndpointPlan, GatewayPlan
from ._errors import (
    AuthError,
    ForwardAuthRefused,
    HeadersTooLarge,
    InvalidQueryParameter,
    InvalidRequest,
    InvalidRequestBody,
    RequestBodyTooLarge,
    RequestError,
    RequestTimeout,
    UrlTooLong,
)
from ._fanout import Receive, backend_report, fan_out
from ._observability import metrics as metrics
from ._observability.logs import AccessRecord
from ._observability.tracing import with_request_id
from ._rules.aggregate import error_body
from ._rules.cachecontrol import shared_store_refusal
from ._rules.forwarded import Network, client_info
from ._rules.headers import select_headers
from ._rules.jsonpath import json_path
from ._rules.jsonvalue import JsonRefused, read_json
from ._rules.resilience import UpstreamGuard
from ._rules.urls import QueryPair, RouteMatch, parse_query
from ._state.shared import SharedState, bypasses_cache, endpoint_cache_key, pack, unpack

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


BIG_BODY_BYTES = 64 * 1024
"""A JSON body from this size is parsed in a worker thread: parsing is linear in the
body (orjson reads 1 MB in a few milliseconds), but the strict check's second parse
(:func:`~gateway._rules.jsonvalue.read_json`, for a body that looks like it repeats a
name) takes about 250 ms for 1 MB, which would stall every other request of the worker."""


def parse_json_body(body: bytes) -> Any:
    """The client's JSON body, parsed strictly (:func:`~gateway._rules.jsonvalue.read_json`).

    Raises:
        InvalidRequestBody: not JSON, nested beyond what can be checked, a name twice in
            an object, or an integer beyond 64 bits (``fields["path"]``: where).
    """
    try:
        return read_json(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestBody(
            "the request body is not valid JSON", fields={"in": "body"}
        ) from None
    except (orjson.JSONEncodeError, RecursionError):
        # orjson reads deeper documents than it writes again (254 levels)
        raise InvalidRequestBody(
            "the request body is nested too deeply", fields={"in": "body"}
        ) from None
    except JsonRefused as exc:
        at = json_path(exc.at)
        raise InvalidRequestBody(
            f"the request body at {at}: {exc.message}", fields={"in": "body", "path": at}
        ) from None


def build_context(
    endpoint: EndpointPlan,
    params: dict[str, str],
    scope: Scope,
    body: bytes | None = None,
    trusted_proxies: Sequence[Network] = (),
    guards: Mapping[str, UpstreamGuard] | None = None,
    state: SharedState | None = None,
    identity: Identity | None = None,
    json_body: Any = None,
) -> CallContext:
    """Take from the client request only what this endpoint's config uses, plus the
    forwarding headers the gateway sets (``X-Forwarded-*``, ``Via``), and check every
    client value a backend will read (:func:`check_client_values`), so that a request the
    backends cannot be called with is refused before any upstream is called.

    Query values and header fields keep the octets the client sent (RFC 3986 section
    2.1): decoded as UTF-8 with ``surrogateescape``, so that encoding them again gives the
    same octets; ``forward_query`` pairs are passed on as the client wrote them.

    Raises:
        InvalidQueryParameter: a ``forward_query`` value is malformed, or a query value
            a template or the ``query_schema`` reads is missing, malformed or unsafe.
        InvalidHeader: a header field a template reads is missing or unsafe.
        InvalidRequestBody: the endpoint reads a JSON body and this one is not JSON, has a
            name twice in one object or an integer beyond 64 bits
            (:func:`~gateway._rules.jsonvalue.read_json`); or a backend sends the body and
            the request has none (or lacks the part it sends).
        SchemaViolation: the query or the body fails the endpoint's ``query_schema`` or
            ``request_schema`` (:func:`check_schemas`).
    """
    client = scope.get("client")
    info = client_info(
        client[0] if client else None,
        scope.get("scheme", "http"),
        scope["headers"],
        trusted_proxies,
    )
    client_fields = select_headers(scope["headers"], endpoint.forward_header_names)
    if identity is not None and identity.replaces:
        # the auth service speaks for these fields: a client's own copy is never sent
        client_fields = [(n, v) for n, v in client_fields if n.lower() not in identity.replaces]
    forward = [
        *client_fields,
        *info.headers,
        # forward auth's copy_response_headers: to every backend call of the request
        *(identity.headers if identity is not None else ()),
    ]
    query_string: bytes = scope.get("query_string") or b""
    pairs = parse_query(query_string) if query_string else []
    extra_query = ""
    if endpoint.forward_query and pairs:
        forwarded: list[bytes] = []
        for pair in pairs:
            if pair.name in endpoint.forward_query:
                if pair.malformed:
                    raise InvalidQueryParameter(
                        f"query parameter {pair.name!r}: malformed percent-encoding",
                        fields={"parameter": pair.name, "in": "query"},
                    )
                forwarded.append(pair.raw)
        extra_query = b"&".join(forwarded).decode("ascii")
    query: dict[str, list[str]] = {}
    malformed: set[str] = set()
    headers: dict[str, str] = {}
    if endpoint.reads_request_values:
        for pair in pairs:
            values = query.setdefault(pair.name, [])
            if pair.malformed and not values:
                malformed.add(pair.name)  # a template reads the first value
            values.append(pair.value)
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("utf-8", "surrogateescape")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if body and json_body is None:
        json_body = parse_json_body(body)
    if endpoint.query_schema is not None or endpoint.request_schema is not None:
        if endpoint.query_schema is not None:
            _check_query_encoding(pairs, endpoint.query_schema.array_properties)
        if not endpoint.reads_request_values:  # else ``query`` holds them already
            for pair in pairs:
                query.setdefault(pair.name, []).append(pair.value)
        check_schemas(endpoint, query, json_body, bool(body))
    ctx = CallContext(
        params,
        forward,
        extra_query,
        query,
        headers,
        body or None,
        json_body,
        ByteBudget(endpoint.max_total_response_bytes),
        info.address,
        guards or {},
        state,
        identity=identity,
    )
    if endpoint.reads_request_values or endpoint.reads_body:
        check_client_values(endpoint, ctx, malformed)
    return ctx


def _check_query_encoding(pairs: Sequence[QueryPair], arrays: frozenset[str]) -> None:
    """A ``query_schema`` reads each parameter's first value (every value of one it checks
    as an array): one with malformed percent-encoding is refused as such, before the schema
    would judge its lenient decoding.

    Raises:
        InvalidQueryParameter: naming the parameter.
    """
    seen: set[str] = set()
    for pair in pairs:
        if pair.malformed and (pair.name not in seen or pair.name in arrays):
            raise InvalidQueryParameter(
                f"query parameter {pair.name!r}: malformed percent-encoding",
                fields={"parameter": pair.name, "in": "query"},
            )
        seen.add(pair.name)


def request_query(scope: Scope) -> dict[str, list[str]]:
    """The request's query parameters, each with its values in order."""
    query: dict[str, list[str]] = {}
    query_string: bytes = scope.get("query_string") or b""
    if query_string:
        for pair in parse_query(query_string):
            query.setdefault(pair.name, []).append(pair.value)
    return query


async def check_rate_limits(
    state: SharedState,
    plan: GatewayPlan,
    match: RouteMatch[EndpointPlan],
    scope: Scope,
    identity: Identity | None = None,
) -> tuple[list[tuple[bytes, bytes]], RequestError | None]:
    """The endpoint's rate limits for this request: the response fields to add, and the
    refusal to answer with instead, if any."""
    client = scope.get("client")
    address = client_info(
        client[0] if client else None,
        scope.get("scheme", "http"),
        scope["headers"],
        plan.trusted_proxies,
    ).address
    return await state.check_rate_limits(
        match.target, match.params, request_query(scope), scope["headers"], address, identity
    )


async def read_body(scope: Scope, receive: Receive, max_bytes: int, timeout_s: float) -> bytes:
    """Read the whole request body, refusing more than ``max_bytes`` or ``timeout_s``.

    Raises:
        RequestBodyTooLarge: declared or sent beyond the limit.
        RequestTimeout: the body did not arrive in time.
        ClientGone: the client disconnected first.
    """
    with trio.move_on_after(timeout_s):
        return await _read_body(scope, receive, max_bytes)
    raise RequestTimeout(f"the request body did not arrive within {timeout_s:g}s")


async def _read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise RequestBodyTooLarge(f"request body exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > max_bytes:
            raise RequestBodyTooLarge(f"request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(
    send: Send,
    status: int,
    body: object,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    head: bool = False,
) -> None:
    await send_body(send, status, orjson.dumps(with_request_id(body)), headers, head=head)


async def send_error(
    send: Send,
    exc: RequestError,
    *,
    head: bool = False,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    fields = [(b"allow", ", ".join(exc.allow).encode())] if exc.allow else []
    fields.extend(headers)
    await send_json(send, exc.status, request_error_body(exc), fields, head=head)


async def send_auth_refusal(
    send: Send,
    exc: AuthError,
    *,
    head: bool = False,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """An auth refusal: the gateway's JSON error with its ``WWW-Authenticate`` challenge,
    or, for a forward auth service's 401/403, that answer as it came (status,
    ``WWW-Authenticate``, ``Content-Type``, body); ``headers`` are added to either."""
    if not isinstance(exc, ForwardAuthRefused):
        await send_error(send, exc, head=head, headers=[*exc.response_headers, *headers])
        return
    length = (b"content-length", str(len(exc.body)).encode())
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [*exc.headers, *headers, length],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else exc.body})


def request_error_body(exc: RequestError) -> dict[str, Any]:
    """The JSON body of a refused request: ``{"error": {"code", "message", ...}}`` with
    the error's ``fields`` (such as the parameter at fault) in the ``error`` object."""
    body = error_body(exc.code, exc.message)
    body["error"].update(exc.fields)
    return body


async def send_body(
    send: Send,
    status: int,
    data: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    head: bool = False,
) -> None:
    """Send an already encoded JSON body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    if head:
        # the content rides along for a compressing send, which gives its exact length
        await send({"type": "http.response.body", "body": b"", HEAD_CONTENT: data})
    else:
        await send({"type": "http.response.body", "body": data})


def check_limits(scope: Scope, max_url_length: int, max_header_size: int) -> None:
    """Refuse an oversized request head.

    h11 (under hypercorn) enforces its buffer limit only while a head is incomplete, so a
    large head that arrives in one read passes it: the sizes are checked here again.

    Raises:
        UrlTooLong: the request target (path and query) is longer than allowed.
        HeadersTooLarge: the request line and headers are larger than allowed.
    """
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    if target > max_url_length:
        raise UrlTooLong(f"the URL is longer than {max_url_length} bytes")
    size = target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    if size > max_header_size:
        raise HeadersTooLarge(f"the request headers are larger than {max_header_size} bytes")


def ambiguous_framing(scope: Scope) -> bool:
    """Both Content-Length and Transfer-Encoding: a request smuggling vector.

    RFC 9112 section 6.1: such a message may be rejected, and the connection must be
    closed after responding. h11 accepts it (decoding the chunked body), so we refuse it.
    """
    names = {name for name, _ in scope["headers"]}
    return b"content-length" in names and b"transfer-encoding" in names


async def send_framing_error(send: Send, *, head: bool = False) -> None:
    exc = InvalidRequest("Content-Length together with Transfer-Encoding is not allowed")
    await send_json(
        send, exc.status, error_body(exc.code, exc.message), [(b"connection", b"close")], head=head
    )


async def serve_aggregate(
    sender: Sender,
    plan: GatewayPlan,
    match: RouteMatch[EndpointPlan],
    scope: Scope,
    receive: Receive,
    send: Send,
    record: AccessRecord | None = None,
    guards: Mapping[str, UpstreamGuard] | None = None,
    state: SharedState | None = None,
    identity: Identity | None = None,
) -> None:
    """Answer one request to an aggregated endpoint (from the endpoint's cache, if it has
    one and it holds the answer).

    The cache answers say ``X-Cache: hit``, ``miss`` or ``bypass`` (a request carrying
    credentials the key does not name: answered by the backends, never stored). Only a
    complete 200 that a shared cache may store (:func:`shared_store_refusal` on the
    headers the backends returned) is kept.
    """
    endpoint = match.target
    if record is not None:
        record.endpoint = endpoint.path
    head = scope["method"] == "HEAD"
    server = plan.config.server
    try:
        body = None
        if endpoint.reads_body:
            body = await read_body(scope, receive, server.max_request_body, server.body_timeout)
        json_body = None
        if body is not None and len(body) >= BIG_BODY_BYTES:
            json_body = await trio.to_thread.run_sync(parse_json_body, body)
        ctx = build_context(
            endpoint,
            match.params,
            scope,
            body,
            plan.trusted_proxies,
            guards,
            state,
            identity,
            json_body,
        )
        if record is not None:
            record.client = ctx.client_address
    except ClientGone:
        return
    except AuthError as exc:
        await send_auth_refusal(send, exc, head=head)
        return
    except RequestError as exc:
        await send_error(send, exc, head=head)
        return
    cache_key: str | None = None
    cache_status = b""
    if endpoint.cache is not None and state is not None:
        if bypasses_cache(endpoint, scope["headers"]):
            metrics.CACHE.labels("endpoint", "bypass").inc()
            cache_status = b"bypass"
        else:
            cache_key = endpoint_cache_key(
                endpoint,
                match.params,
                scope.get("query_string") or b"",
                request_query(scope),
                scope["headers"],
                ctx.forward_headers,
                identity,
            )
            entry = await state.get(cache_key)
            unpacked = unpack(entry) if entry is not None else None
            if unpacked is not None and isinstance(unpacked[0], list):
                metrics.CACHE.labels("endpoint", "hit").inc()
                stored = [
                    (str(n).encode("latin-1"), str(v).encode("latin-1")) for n, v in unpacked[0]
                ]
                await send_body(send, 200, unpacked[1], [*stored, (b"x-cache", b"hit")], head=head)
                return
            metrics.CACHE.labels("endpoint", "miss").inc()
            cache_status = b"miss"
    # a client that leaves cancels the fan-out (and so every upstream call) at once
    answer = await fan_out(sender, endpoint, ctx, receive)
    if answer is None:
        return  # the client left
    result, results = answer
    if record is not None:
        record.backends = {
            b.name: backend_report(r) for b, r in zip(endpoint.backends, results, strict=True)
        }
        record.timings = [
            (b.name, r.outcome, r.duration_s)
            for b, r in zip(endpoint.backends, results, strict=True)
        ]
    headers = [
        (b"x-gateway-complete", b"true" if result.complete else b"false"),
        (b"x-gateway-backends", result.backends_header.encode("latin-1")),
        *((n.encode("latin-1"), v.encode("latin-1")) for n, v in result.headers),
    ]
    if not cache_status:
        await send_json(send, result.status, result.body, headers, head=head)
        return
    data = orjson.dumps(with_request_id(result.body))
    if (
        cache_key is not None
        and result.status == 200
        and result.complete  # only complete answers are kept ...
        and shared_store_refusal(200, headers) is None  # ... that anyone may be given,
        and all(r.shareable for r in results)  # ... made of replies anyone may be given
    ):
        assert state is not None and endpoint.cache is not None
        # stored before sending: the next request hits, and a client that leaves
        # once it has its answer cannot cut the store call short
        meta = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]
        await state.set(cache_key, pack(meta, data), endpoint.cache.ttl_s)
    await send_body(send, result.status, data, [*headers, (b"x-cache", cache_status)], head=head)


async def check_auth(
    endpoint: EndpointPlan,
    scope: Scope,
    send_upstream: Any,
    authenticators: Any,
    record: AccessRecord | None,
) -> Identity:
    """The endpoint's auth policies applied to the request (its headers and query), with
    the outcome in the access record and, for a refusal, ``gateway_auth_refused_total``.

    Raises:
        AuthError: the policies refused the request.
    """
    assert endpoint.auth is not None
    try:
        identity = await authenticate(
            endpoint.auth,
            scope["headers"],
            scope.get("query_string") or b"",
            send_upstream,
            authenticators,
        )
    except AuthError as exc:
        if record is not None:
            record.auth = {"refused": exc.code, "reason": exc.reason}
        metrics.AUTH_REFUSED.labels(endpoint.path, exc.code).inc()
        raise
    if record is not None:
        record.auth = {"policy": identity.policy}
    return identity
