"""WebSocket relays: the edge that accepts a client's upgrade on a passthrough endpoint
with ``websocket``, opens the upstream's WebSocket and relays between the two (RFC 6455).

The order of an upgrade's layers is the HTTP requests': route, (no CORS, no compression),
origin check (``allow_origins``), authenticate, rate-limit, the endpoint's open-socket
limit, then the upstream. Every refusal is an HTTP answer with the gateway's JSON error
body (ASGI's ``websocket.http.response`` extension): no upstream is called for it. The
upstream's handshake goes through the passthrough pipeline (breaker, bulkhead, host
choice) under the backend's ``timeout``; an upstream that answers the upgrade with 3xx, 4xx
or 5xx has that answer passed to the client (body up to 64 KiB), anything else that is not
a WebSocket is a JSON 502 (504 on the timeout).

Once both sides are open, one nursery holds the relay: a task per direction, the idle
watch and the shutdown watch (one task). Whichever ends first decides (:meth:`Relay.end`): the other
side is closed with the code and reason of the first (see :mod:`gateway._rules.websocket`
for the codes that cannot be passed as they are), the close handshake gets the backend's
``timeout``, and the nursery is cancelled, so nothing of the relay outlives it. Cancelled
from outside (the server stopping hard), the upstream connection is closed at once.

Messages are relayed whole (text stays text), one at a time: a slow reader on either side
slows the other side's reading in turn (no queue grows in the gateway beyond hypercorn's
own ``max_app_queue_size`` messages).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import trio

from ._auth.rules import Identity
from ._call.exchange import Reply
from ._call.pipeline import PASSTHROUGH, CallSpec, CallStats, compose
from ._call.request import UpstreamRequest, build_request
from ._config.plan import EndpointPlan
from ._endpoint import (
    build_context,
    check_auth,
    check_limits,
    check_rate_limits,
    send_auth_refusal,
    send_error,
    send_json,
)
from ._errors import (
    AuthError,
    InvalidHeader,
    MethodNotAllowed,
    RequestError,
    TooManyWebSockets,
    WebSocketNotAccepted,
    WebSocketOriginRefused,
)
from ._observability import metrics
from ._observability.logs import AccessRecord
from ._rules.aggregate import Outcome, error_body, http_outcome
from ._rules.headers import passed_back
from ._rules.websocket import (
    GOING_AWAY,
    HANDSHAKE_FIELDS,
    NO_STATUS_RECEIVED,
    code_for_client,
    code_for_upstream,
    invalid_subprotocol,
    offered_subprotocols,
    origin_allowed,
    without_handshake_fields,
)
from ._upstream.websocket import (
    Closed,
    HandshakeFailed,
    Pinged,
    Refusal,
    UpstreamWebSocket,
    open_websocket,
)
from ._wsstream import EXTENSION, MAX_MESSAGE_KEY, PING_EVENT

if TYPE_CHECKING:
    from ._app import GatewayApp

log = logging.getLogger("gateway")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

CLOSE_ALLOWANCE_S = 1.0
"""After ``graceful_timeout``, how long the close handshakes of the sockets still open get
before the server stops: they are closed with 1001 at ``graceful_timeout``."""
RETRY_AFTER_S = b"1"
_UPGRADE_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"host"})
# an upgrade's answer has no content (RFC 9110 sections 8.6 and 15.2.2, RFC 8441 section 5)
_NO_CONTENT_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"trailer"})


class Relays:
    """A worker's open relays: how many each endpoint has (``max_connections``), and when
    the server stops, the time they are closed with 1001 (:meth:`close_at`)."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}  # by route: the same across a reload
        self.closing = trio.Event()
        self.close_deadline = float("inf")

    @property
    def total(self) -> int:
        return sum(self.open.values())

    def close_at(self, deadline: float) -> None:
        """Close every open relay (and any opened later) with 1001 at ``deadline`` (trio
        time): the end of the server's ``graceful_timeout``."""
        self.close_deadline = min(self.close_deadline, deadline)
        self.closing.set()


def _as_websocket_response(send: Send) -> Send:
    """``send`` for the HTTP answer to an upgrade: the error helpers' ``http.response.*``
    messages as ASGI's ``websocket.http.response.*``."""

    async def sending(message: dict[str, Any]) -> None:
        await send({**message, "type": "websocket." + message["type"]})

    return sending


def _http_view(scope: dict[str, Any]) -> dict[str, Any]:
    """The upgrade request as the HTTP layers read it: a GET, with the scheme it came on
    (``X-Forwarded-Proto`` says ``http``/``https``, never ``ws``)."""
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return {**scope, "type": "http", "method": "GET", "scheme": scheme}


async def serve_websocket(
    app: GatewayApp,
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    record: AccessRecord | None,
) -> None:
    """Answer one WebSocket scope: refuse the upgrade with an HTTP answer, or relay it
    until either side closes."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client left before the app started
    plan = app.plan  # the whole socket runs on the config it started with
    answer = _as_websocket_response(send)
    if EXTENSION not in scope.get("extensions", {}):
        # another server than the gateway's hypercorn stream: close codes and pings
        # could not be relayed faithfully
        await send_json(
            answer, 501, error_body("not_implemented", "WebSockets need the gateway's server")
        )
        return
    http = _http_view(scope)
    raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    try:
        server = plan.config.server
        check_limits(http, server.max_url_length, server.max_header_size)
        match = plan.router.match(raw_path, "GET")
    except MethodNotAllowed as exc:
        await send_error(answer, MethodNotAllowed(exc.message, allow=(*exc.allow, "OPTIONS")))
        return
    except RequestError as exc:
        await send_error(answer, exc)
        return
    endpoint = match.target
    if record is not None:
        record.endpoint = endpoint.path
    fields = endpoint.response_fields
    settings = endpoint.websocket
    if settings is None:
        refusal: RequestError = WebSocketNotAccepted(
            "this endpoint does not accept WebSocket upgrades"
        )
        await send_error(answer, refusal, headers=fields)
        return
    if not origin_allowed(settings.origins, scope["headers"]):
        refusal = WebSocketOriginRefused("pages of this origin may not open this WebSocket")
        await send_error(answer, refusal, headers=fields)
        return
    offered = offered_subprotocols(scope.get("subprotocols") or ())
    bad = invalid_subprotocol(offered)
    if bad is not None:
        refusal = InvalidHeader(
            "Sec-WebSocket-Protocol offers a subprotocol that is not a token",
            fields={"header": "sec-websocket-protocol"},
        )
        await send_error(answer, refusal, headers=fields)
        return
    identity: Identity | None = None
    if endpoint.auth is not None:
        try:
            identity = await check_auth(
                endpoint, scope, app.transport.send, app.authenticators, record
            )
        except AuthError as exc:
            await send_auth_refusal(answer, exc, headers=fields)
            return
    limit_fields: list[tuple[bytes, bytes]] = []
    if endpoint.rate_limits and app.state is not None:
        limit_fields, limited = await check_rate_limits(app.state, plan, match, http, identity)
        if limited is not None:
            await send_error(answer, limited, headers=[*fields, *limit_fields])
            return
    relays = app.relays
    if relays.open.get(endpoint.path, 0) >= settings.max_connections:
        refusal = TooManyWebSockets(
            f"this endpoint has its {settings.max_connections} WebSockets open"
        )
        await send_error(answer, refusal, headers=[*fields, (b"retry-after", RETRY_AFTER_S)])
        return
    try:
        ctx = build_context(
            endpoint,
            match.params,
            http,
            None,
            plan.trusted_proxies,
            app.guards,
            identity=identity,
        )
    except RequestError as exc:
        await send_error(answer, exc, headers=fields)
        return
    relays.open[endpoint.path] = relays.open.get(endpoint.path, 0) + 1
    metrics.WEBSOCKETS_OPEN.labels(endpoint.path).inc()
    try:
        await _upgrade(
            app,
            endpoint,
            ctx,
            offered,
            receive,
            send,
            answer,
            [*fields, *limit_fields],
            record,
            http2=scope.get("http_version") == "2",
        )
    finally:
        relays.open[endpoint.path] -= 1
        metrics.WEBSOCKETS_OPEN.labels(endpoint.path).dec()


class Upgrading:
    """The innermost layer of the upstream's handshake: a connection outside the pool, the
    opening handshake, and the socket (``Reply.stream``) or the upstream's refusal."""

    __slots__ = ("app", "max_message_bytes", "subprotocols")

    def __init__(self, app: GatewayApp, subprotocols: list[str], max_message_bytes: int) -> None:
        self.app = app
        self.subprotocols = subprotocols
        self.max_message_bytes = max_message_bytes

    async def send(self, request: UpstreamRequest) -> Reply:
        host = ""
        headers = []
        for name, value in without_handshake_fields(request.headers):
            lower = name.lower()
            if lower == b"host":
                host = value.decode("latin-1")
            elif lower not in _UPGRADE_FIELDS:
                headers.append((name, value))
        try:
            stream = await self.app.transport.open_stream(request.base.key)
        except httpx.TransportError as exc:  # the connection or the TLS handshake
            return Reply(Outcome.UNREACHABLE, detail=str(exc) or type(exc).__name__)
        try:
            result = await open_websocket(
                stream, host, request.target, headers, self.subprotocols, self.max_message_bytes
            )
        except HandshakeFailed as exc:
            return Reply(Outcome.INVALID_RESPONSE, detail=str(exc))
        if isinstance(result, Refusal):
            if result.truncated:  # cut, it would be a body the upstream never sent
                detail = f"refused the upgrade with {result.status} and a body over 64 KiB"
                return Reply(Outcome.TOO_LARGE, detail=detail)
            return Reply(
                http_outcome(result.status), result.status, result.headers, body=result.body
            )
        return Reply(Outcome.OK, 101, result.headers, stream=result)


async def _upgrade(
    app: GatewayApp,
    endpoint: EndpointPlan,
    ctx: Any,
    offered: list[str],
    receive: Receive,
    send: Send,
    answer: Send,
    fields: list[tuple[bytes, bytes]],
    record: AccessRecord | None,
    *,
    http2: bool = False,
) -> None:
    backend = endpoint.backends[0]
    settings = endpoint.websocket
    assert settings is not None
    timeout_s = backend.timeout_s
    scope = trio.CancelScope(deadline=trio.current_time() + timeout_s)
    stats = CallStats(scope)
    spec = CallSpec(backend, ctx.guards.get(backend.guard_name), None, stats)
    stack = compose(spec, PASSTHROUGH, Upgrading(app, offered, settings.max_message_bytes))
    reply: Reply | None = None
    client_left = False
    try:
        async with trio.open_nursery() as nursery:

            async def watch_client() -> None:
                # before the accept, only the client's leaving can come: it cancels the
                # upstream's handshake (no verdict for the breaker)
                nonlocal client_left
                await receive()
                client_left = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_client)
            with scope:
                reply = await stack.send(build_request(backend, ctx, default_accept=False))
            nursery.cancel_scope.cancel()
    except RequestError as exc:
        await send_error(answer, exc, headers=fields)
        return
    if client_left:
        if reply is not None and isinstance(reply.stream, UpstreamWebSocket):
            reply.stream.abort()
        if record is not None:
            record.status = 0  # as for a request whose client left before the answer
            record.backends = {backend.name: {"outcome": Outcome.CANCELLED}}
        return
    if reply is None:
        reply = Reply(Outcome.TIMEOUT, detail=f"no handshake answer within {timeout_s:g}s")
    backends_header = f"{backend.name}={reply.outcome}".encode()
    if record is not None:
        record.backends = {backend.name: {"outcome": reply.outcome}}
        if reply.detail:
            record.backends[backend.name]["reason"] = reply.detail
    upstream = reply.stream
    if not isinstance(upstream, UpstreamWebSocket):
        await _refuse(answer, backend.name, reply, backends_header, fields)
        return
    try:
        # wsproto has checked the subprotocol is one the client offered
        dropped = HANDSHAKE_FIELDS | _NO_CONTENT_FIELDS | endpoint.removed_fields
        accept_fields = passed_back(upstream.headers, dropped | {name for name, _ in fields})
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": upstream.subprotocol,
                "headers": [*accept_fields, *fields, (b"x-gateway-backends", backends_header)],
                MAX_MESSAGE_KEY: settings.max_message_bytes,
            }
        )
        if record is not None:
            # RFC 8441 section 5: over HTTP/2 the upgrade's answer is a 200
            record.status = 200 if http2 else 101
            metrics.observe_request(endpoint.path, "GET", record.status, record.elapsed_s)
        relay = Relay(upstream, receive, send, settings.idle_timeout_s, timeout_s, app.relays)
        try:
            await relay.run()
        finally:
            if record is not None:
                record.websocket = relay.summary()
    finally:
        upstream.abort()


async def _refuse(
    answer: Send,
    backend: str,
    reply: Reply,
    backends_header: bytes,
    fields: list[tuple[bytes, bytes]],
) -> None:
    """The client's answer when the upstream did not open a socket: its own 3xx, 4xx or
    5xx answer, or a JSON 502 (504 on the handshake timeout)."""
    gateway_fields = [(b"x-gateway-complete", b"false"), (b"x-gateway-backends", backends_header)]
    if reply.status >= 300:
        kept = passed_back(reply.headers, HANDSHAKE_FIELDS | {b"content-length"})
        body = reply.body or b""
        await answer(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    *kept,
                    *fields,
                    *gateway_fields,
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await answer({"type": "http.response.body", "body": body})
        return
    status = 504 if reply.outcome == Outcome.TIMEOUT else 502
    await send_json(
        answer,
        status,
        error_body(
            "upstream_failed",
            f"WebSocket backend failed: {reply.outcome}",
            {backend: reply.outcome},
        ),
        [*fields, *gateway_fields, (b"cache-control", b"no-store")],
    )


class Relay:
    """One open relay: the client's socket (through ASGI) and the upstream's, until one
    side ends (see the module). ``ended`` says how: ``(side, code, reason)``, side being
    ``client``, ``upstream``, ``idle`` or ``shutdown``.

    Only the waits for the next message are cut when the relay ends: a message being
    written goes out whole (a frame cut midway would corrupt the stream the close frame
    follows), and the close handshakes run beside it, both sides at once, under the
    backend's ``timeout``: each close frame follows what its side is being written."""

    def __init__(
        self,
        upstream: UpstreamWebSocket,
        receive: Receive,
        send: Send,
        idle_timeout_s: float,
        close_timeout_s: float,
        relays: Relays,
    ) -> None:
        self.upstream = upstream
        self.receive = receive
        self.send = send
        self.idle_timeout_s = idle_timeout_s
        self.close_timeout_s = close_timeout_s
        self.relays = relays
        self.last_activity = trio.current_time()
        self.ended: tuple[str, int | None, str | None] | None = None
        self.client_gone = False
        self.messages = {"from_client": 0, "from_upstream": 0}
        self._waits: set[trio.CancelScope] = set()
        self._ended = trio.Event()
        # one reader of the upstream at a time: the relay's, then the close handshake's
        self._upstream_read = trio.Lock()

    def summary(self) -> dict[str, Any]:
        """For the access log: who ended the relay, with which code (for an upstream's end,
        the code the client was sent), and messages received from each side."""
        side, code, _ = self.ended or ("cancelled", None, None)
        if side == "upstream":  # what the client was sent (1011 for a drop or an error)
            code = code_for_client(code)
        return {"ended_by": side, "close_code": code, **self.messages}

    async def run(self) -> None:
        """Relay until either side ends, then close the other; the upstream connection is
        closed when this returns, however it does."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._from_client)
                nursery.start_soon(self._from_upstream)
                nursery.start_soon(self._watch)
                await self._ended.wait()
                # the close handshakes run beside a message still being written: their
                # frames go out after it (each side's writes are in order), never cut it
                with trio.move_on_after(self.close_timeout_s):
                    await self._close_other_side()
                nursery.cancel_scope.cancel()
        finally:
            self.upstream.abort()

    def end(self, side: str, code: int | None, reason: str | None) -> None:
        """End the relay, once (later calls change nothing): stop waiting for messages and
        start the close handshakes."""
        if self.ended is not None:
            return
        self.ended = (side, code, reason)
        for scope in self._waits:
            scope.cancel()
        self._ended.set()

    async def _next(
        self, wait: Callable[[], Awaitable[Any]], deadline: float = float("inf")
    ) -> Any:
        """``wait()``'s result, or None once the relay has ended or at ``deadline``."""
        with trio.CancelScope(deadline=deadline) as scope:
            self._waits.add(scope)
            try:
                if self.ended is None:
                    return await wait()
            finally:
                self._waits.discard(scope)
        return None

    def _touch(self) -> None:
        self.last_activity = trio.current_time()

    async def _from_client(self) -> None:
        upstream = self.upstream
        while True:
            message = await self._next(self.receive)
            if message is None:
                return
            kind = message["type"]
            if kind == "websocket.receive":
                self._touch()
                self.messages["from_client"] += 1
                text = message.get("text")
                data = text if text is not None else message.get("bytes") or b""
                if not await upstream.send_message(data):
                    # the upstream's side is closing or lost: its reader reports which,
                    # with the upstream's own code when it sent one
                    return
            elif kind == PING_EVENT:
                self._touch()
                await upstream.ping(message["bytes"])
            elif kind == "websocket.disconnect":
                self.client_gone = True
                code = int(message.get("code", NO_STATUS_RECEIVED))
                self.end("client", code, message.get("reason"))
                return

    async def _from_upstream(self) -> None:
        while True:
            async with self._upstream_read:
                received = await self._next(self.upstream.receive)
            if received is None:
                return
            if isinstance(received, Closed):
                self.end("upstream", received.code, received.reason)
                return
            self._touch()
            if isinstance(received, Pinged):
                await self.send({"type": PING_EVENT, "bytes": received.payload})
                continue
            self.messages["from_upstream"] += 1
            if isinstance(received, str):
                await self.send({"type": "websocket.send", "text": received})
            else:
                await self.send({"type": "websocket.send", "bytes": received})

    async def _watch(self) -> None:
        """The idle timeout and the server's shutdown, in one task (a task and its frames
        are a good part of what a held socket costs)."""
        relays = self.relays
        while self.ended is None:
            now = trio.current_time()
            if relays.closing.is_set() and now >= relays.close_deadline:
                self.end("shutdown", GOING_AWAY, "server shutting down")
                return
            idle_at = self.last_activity + self.idle_timeout_s
            if now >= idle_at:
                self.end("idle", GOING_AWAY, "idle timeout")
                return
            if relays.closing.is_set():
                await self._next(trio.sleep_forever, min(idle_at, relays.close_deadline))
            else:  # until the idle deadline, or the shutdown's start
                await self._next(relays.closing.wait, idle_at)

    async def _close_other_side(self) -> None:
        """The close handshake of the side that did not end the relay (both sides at once,
        for idle and shutdown: one side that does not read must not keep the other from
        its close frame)."""
        assert self.ended is not None
        side, code, reason = self.ended
        async with trio.open_nursery() as nursery:
            if side != "client" and not self.client_gone:
                message = {
                    "type": "websocket.close",
                    "code": code_for_client(code),
                    "reason": reason,
                }
                nursery.start_soon(self.send, message)
            if side != "upstream":  # the upstream's own close frame was answered as it came
                nursery.start_soon(self._close_upstream, side, code, reason)

    async def _close_upstream(self, side: str, code: int | None, reason: str | None) -> None:
        upstream_code = GOING_AWAY
        if side == "client":
            relayed = code_for_upstream(code if code is not None else NO_STATUS_RECEIVED)
            if relayed is None:
                return  # dropped, as the client's was (the connection is closed on return)
            upstream_code = relayed
        if upstream_code == NO_STATUS_RECEIVED:
            reason = None
        if self.upstream.broken:
            return  # a frame was cut midway: the connection is dropped on return
        await self.upstream.close(upstream_code, reason)
        # RFC 6455 section 7.1.1: a client waits for the server's close, then the TCP close
        async with self._upstream_read:
            while not isinstance(await self.upstream.receive(), Closed):
                pass
