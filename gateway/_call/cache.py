"""The backend cache and coalescing: the two outermost layers of a backend call.

**Cache.** A backend with ``cache:`` stores its upstream's 2xx replies (status, end-to-end
header lines, body) under a key of the method, the final URL and every request field the
gateway sends but its own per-request ones (:data:`~gateway._rules.headers.NOT_CACHE_KEYED`),
for as long as RFC 9111 lets a shared cache (:func:`~gateway._rules.cachecontrol.shared_freshness`:
never with ``Set-Cookie``, ``private``, ``no-store`` or ``no-cache``; a request with
``Authorization`` only when the response allows it, section 3.5), else ``cache.ttl`` when
the upstream gave no freshness at all. A hit answers here: nothing below runs. A reply not
stored because of the client's ``Authorization`` is tagged
:data:`NOT_STORED_AUTHORIZATION`, which ``X-Gateway-Backends`` shows: nothing else would
tell why such a backend never hits.

**Coalescing.** With ``coalesce``, concurrent identical misses share one upstream request
(:class:`~gateway._state.coalesce.Coalescer`). A follower takes the leader's reply only if
that reply may be shared between clients (:func:`shareable`); otherwise it makes its own
call, so a reply meant for one client (a fresh session cookie, ``private``) never reaches
another.

Replies are stored and shared, not results: each backend shapes a reply itself.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from .._observability import metrics as metrics
from .._rules.aggregate import Outcome
from .._rules.cachecontrol import cache_key, may_share, shared_freshness
from .._rules.headers import NOT_CACHE_KEYED, strip_hop_by_hop
from .._state.shared import pack, unpack
from .exchange import Reply
from .request import UpstreamRequest

if TYPE_CHECKING:
    from .._config.plan import BackendCachePlan
    from .._state.coalesce import Coalescer
    from .._state.shared import SharedState
    from .pipeline import CallSpec, Layer


def key_fields(request: UpstreamRequest) -> frozenset[bytes]:
    """The request fields that may vary an upstream response: every one the gateway sends
    (the upstream's and backend's headers, forwarded client headers) but its own
    per-request ones."""
    return frozenset(n.lower() for n, _ in request.headers) - NOT_CACHE_KEYED


def request_key(request: UpstreamRequest) -> str:
    """The store (and coalescing) key of an upstream request; on an endpoint with auth,
    also the identity's digest (``partition``), so that one identity's reply never reaches
    another even when the call does not depend on who asked."""
    key = cache_key(request.method, request.url, request.headers, key_fields(request))
    return f"{key}:{request.partition}" if request.partition else key


def shareable(reply: Reply) -> bool:
    """Whether a reply may go to another client than the one it was made for: what a
    shared cache may store (:func:`~gateway._rules.cachecontrol.shared_store_refusal`: no
    ``Set-Cookie``, ``private``, ``no-store``, ``no-cache``, ``Vary: *``, and a
    Cache-Control that parses), whatever its status; a failure without an answer holds
    nothing of anyone's."""
    # judged as a 200 would be: a status a cache cannot store (206, say) still goes to the
    # client with its headers, cookies included
    return not reply.status or may_share(reply.headers)


# Reply.cache of a reply not stored because the request carried Authorization and the
# response did not allow a shared cache to reuse it (RFC 9111 section 3.5): shown in
# X-Gateway-Backends and the debug block, since nothing else tells why nothing is cached
NOT_STORED_AUTHORIZATION = "not-stored-authorization"


def _ttl_s(
    plan: BackendCachePlan,
    request: UpstreamRequest,
    reply: Reply,
    static: frozenset[tuple[bytes, bytes]],
) -> tuple[float, str]:
    """How long a reply may be stored, and why not when it may not: as its Cache-Control
    allows, else the backend's ``cache.ttl`` when the upstream gave no freshness at all;
    (0, reason): not stored (the reasons of
    :class:`~gateway._rules.cachecontrol.Freshness`).

    RFC 9111 section 3.5 (an authorized request's response is stored only if it allows
    it with ``s-maxage``, ``public`` or ``must-revalidate``) applies to an
    ``Authorization`` of the client's; one the config sets itself (``static``: a service
    token, the same for every client, and part of the key) does not make a response
    private."""
    fields = key_fields(request)
    authorized = any(
        name.lower() == b"authorization" and (name.lower(), value) not in static
        for name, value in request.headers
    )
    freshness = shared_freshness(
        reply.status,
        reply.headers,
        now_s=time.time(),
        key_headers=fields,
        request_authorized=authorized,
    )
    if freshness.storable:
        return freshness.ttl_s, ""
    if freshness.reason == "no-freshness" and plan.ttl_s is not None:
        return plan.ttl_s, ""
    return 0.0, freshness.reason


class Cache:
    """Answers from the store; stores what may be stored (see the module docstring)."""

    __slots__ = ("next", "plan", "state", "static")

    def __init__(self, next: Layer, spec: CallSpec) -> None:
        assert spec.backend.cache is not None and spec.state is not None
        self.next = next
        self.plan = spec.backend.cache
        self.state: SharedState = spec.state
        self.static = spec.backend.static_authorization

    @staticmethod
    def wanted(spec: CallSpec) -> bool:
        return spec.backend.cache is not None and spec.state is not None

    async def send(self, request: UpstreamRequest) -> Reply:
        state = self.state
        key = request_key(request)
        entry = await state.get(key)
        unpacked = unpack(entry) if entry is not None else None
        if unpacked is not None and isinstance(unpacked[0], dict):
            meta, body = cast("dict[str, object]", unpacked[0]), unpacked[1]
            status = meta.get("status")
            headers = meta.get("headers")
            if isinstance(status, int) and isinstance(headers, list):
                metrics.CACHE.labels("backend", "hit").inc()
                lines = [(str(n).encode("latin-1"), str(v).encode("latin-1")) for n, v in headers]
                return Reply(Outcome.OK, status, lines, body, cache="hit")
        reply = await self.next.send(request)
        if reply.cache != "coalesced":
            metrics.CACHE.labels("backend", "miss").inc()
            if reply.outcome == Outcome.OK and reply.body is not None:
                ttl_s, reason = _ttl_s(self.plan, request, reply, self.static)
                if ttl_s > 0:
                    stored = [
                        [n.decode("latin-1"), v.decode("latin-1")]
                        for n, v in strip_hop_by_hop(reply.headers)
                    ]
                    meta = {"status": reply.status, "headers": stored}
                    await state.set(key, pack(meta, reply.body), ttl_s)
                elif reason == "authorization":
                    return reply.tagged(cache=NOT_STORED_AUTHORIZATION)
        return reply


class Coalescing:
    """Concurrent identical calls share one upstream request, when its reply may be
    shared; a follower of a reply that may not makes its own call."""

    __slots__ = ("flights", "next")

    def __init__(self, next: Layer, spec: CallSpec) -> None:
        assert spec.state is not None
        self.next = next
        self.flights = cast("Coalescer[Reply]", spec.state.flights)

    @staticmethod
    def wanted(spec: CallSpec) -> bool:
        cache = spec.backend.cache
        return cache is not None and cache.coalesce and spec.state is not None

    async def send(self, request: UpstreamRequest) -> Reply:
        leader = False

        async def fetch() -> Reply:
            nonlocal leader
            leader = True
            return await self.next.send(request)

        reply = await self.flights.run(request_key(request), fetch)
        if leader:
            return reply
        if not shareable(reply):
            metrics.CACHE.labels("backend", "not_shared").inc()
            return await self.next.send(request)
        metrics.CACHE.labels("backend", "coalesced").inc()
        return reply.tagged(cache="coalesced")
