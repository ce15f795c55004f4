"""Header rules (pure): what crosses the gateway and what does not.

RFC 9110 section 7.6.1: hop-by-hop fields (Connection and every field it names,
Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade) describe one
connection and are never forwarded. The gateway frames bodies itself, so it sets its own
Content-Length/Transfer-Encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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

RawHeaders = list[tuple[bytes, bytes]]

# Request fields the gateway itself sets per client or per request: never part of a cache
# key (they would make every entry private to one request).
NOT_CACHE_KEYED = frozenset(
    {
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
        b"traceparent",
        b"tracestate",
        b"x-request-id",
    }
)


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
