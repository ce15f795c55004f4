"""Header rules (pure): what crosses the gateway and what does not.

The one home of the gateway's header-name sets. Every set holds lower-case ``bytes``
names, as ASGI and the upstream transport carry them; config checks compare ``str``
names against the ``*_STR`` views. Each set cites the rule it encodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# RFC 9110 section 7.6.1: hop-by-hop fields describe one connection and are never
# forwarded: Connection (and every field it names, see ``connection_named``) and the
# fields known to need removal, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding,
# Upgrade; Trailer as RFC 2616 section 13.5.1 listed it.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Message framing, decided by the gateway for each message it sends: the body's length
# (RFC 9110 section 8.6 Content-Length, RFC 9112 section 6.1 Transfer-Encoding), the
# target's authority (RFC 9110 section 7.2 Host) and the client's expectation of a 100
# response (RFC 9110 section 10.1.1 Expect), which belongs to the client's own connection.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host", b"expect"})

# Fields the gateway sets itself on every upstream call, per request: the forwarding
# fields (X-Forwarded-*, the Forwarded field of RFC 7239 section 4, Via of RFC 9110
# section 7.6.3; see ``_rules.forwarded``) and the trace context (W3C Trace Context
# section 3, traceparent and tracestate, and X-Request-Id; see ``_observability.tracing``).
# A client's value is never copied: the gateway's own replaces it.
GATEWAY_SET = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"via",
        b"traceparent",
        b"tracestate",
        b"x-request-id",
    }
)

# Fields a config may not list in ``forward_headers`` nor set as a static upstream or
# backend header: hop-by-hop ones (RFC 9110 section 7.6.1), the framing the gateway does
# itself, and the fields it sets per request.
NEVER_FORWARDED = HOP_BY_HOP | FRAMING | GATEWAY_SET

# Forwarding fields the gateway sets from what the client sent (its Host, its scheme):
# few distinct values, and an upstream may build links from them, so a cache keys on them
# (an unkeyed X-Forwarded-Host is the classic way to poison a shared cache).
KEYED_FORWARDING = frozenset({b"x-forwarded-host", b"x-forwarded-proto"})

# Request fields that never vary an upstream response for caching (RFC 9111 section 4.1,
# Vary; RFC 9110 section 12.5.5): the framing and the gateway's per-request fields (the
# client's address, trace ids). Keyed on, they would make every cache entry private to one
# request. An upstream whose answer depends on the client's address must not be cached.
NOT_CACHE_KEYED = FRAMING | (GATEWAY_SET - KEYED_FORWARDING)

# Upstream response fields a passthrough response does not copy: the server sets its own
# Date (RFC 9110 section 6.6.1: an origin server with a clock sends one), and the gateway
# its own X-Request-Id (the id of the client's request, in the access log too), so an
# upstream's would be sent twice. Hop-by-hop fields are dropped besides these.
NOT_PASSED_BACK = frozenset({b"date", b"x-request-id"})

# Upstream response fields a backend's ``return_headers`` may not copy into an aggregated
# response: everything never forwarded, and the representation and server fields the
# gateway writes for the merged body itself (RFC 9110 sections 8.3 Content-Type, 8.4
# Content-Encoding, 6.6.1 Date, 10.2.4 Server).
NEVER_RETURNED = NEVER_FORWARDED | {b"content-type", b"content-encoding", b"date", b"server"}

# Fields named ``X-Gateway-*`` are the gateway's own (X-Gateway-Complete,
# X-Gateway-Backends): a config may neither forward nor return one.
GATEWAY_PREFIX = "x-gateway-"

# ``str`` views for the config pipeline, which checks names as the config file spells them.
NEVER_FORWARDED_STR = frozenset(name.decode("ascii") for name in NEVER_FORWARDED)
NEVER_RETURNED_STR = frozenset(name.decode("ascii") for name in NEVER_RETURNED)

RawHeaders = list[tuple[bytes, bytes]]


def connection_named(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Field names listed in Connection headers (lower-case)."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(named)


def strip_hop_by_hop(
    headers: Sequence[tuple[bytes, bytes]], also: frozenset[bytes] = frozenset()
) -> RawHeaders:
    """Drop hop-by-hop fields, every field the Connection header names, and ``also``."""
    drop = HOP_BY_HOP | connection_named(headers) | also
    return [(name, value) for name, value in headers if name.lower() not in drop]


def select_headers(headers: Iterable[tuple[bytes, bytes]], wanted: frozenset[bytes]) -> RawHeaders:
    """Client headers to forward: only the names the config lists, never a hop-by-hop one."""
    if not wanted:
        return []
    headers = list(headers)
    drop = HOP_BY_HOP | connection_named(headers)
    return [(n, v) for n, v in headers if (low := n.lower()) in wanted and low not in drop]


def passed_back(
    headers: Sequence[tuple[bytes, bytes]], also: frozenset[bytes] = frozenset()
) -> RawHeaders:
    """An upstream's response fields as a passthrough answer (or a WebSocket's) carries
    them: without hop-by-hop fields (:func:`strip_hop_by_hop`), :data:`NOT_PASSED_BACK`,
    the gateway's own ``X-Gateway-*`` and ``also`` (lower-case names)."""
    return [
        (name, value)
        for name, value in strip_hop_by_hop(headers, also=NOT_PASSED_BACK | also)
        if not name.lower().startswith(_GATEWAY_PREFIX_BYTES)
    ]


_GATEWAY_PREFIX_BYTES = GATEWAY_PREFIX.encode("ascii")
