"""Who the client is, and the forwarding headers sent upstream (pure).

``X-Forwarded-For`` is believed only when the peer is a trusted proxy, and then only as
far as the chain stays trusted, walking from the right (the entries a trusted proxy
appended). Anything a client wrote itself is replaced. Every upstream call carries
``X-Forwarded-For`` (the believed chain plus the peer), ``X-Forwarded-Proto``,
``X-Forwarded-Host`` and ``Via`` (RFC 9110 section 7.6.3).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

VIA = b"1.1 trio-gateway"


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """Parse CIDRs such as ``10.0.0.0/8`` or ``127.0.0.1``.

    Raises:
        ValueError: not an address or network.
    """
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


@dataclass(frozen=True)
class ClientInfo:
    """The believed client address and the headers to send upstream."""

    address: str
    headers: tuple[tuple[bytes, bytes], ...]


def _believed(peer: str, xff: list[str], trusted: Sequence[Network]) -> tuple[str, list[str]]:
    """The client address and the believed ``X-Forwarded-For`` hops, behind the trusted
    proxy ``peer``: walk from the right while the hops are trusted proxies; the first
    untrusted one is the client, and everything left of it is the client's own say-so."""
    kept: list[str] = []
    address = peer
    for hop in reversed(xff):
        kept.append(hop)
        if not _trusted(hop, trusted):
            address = hop
            break
    if not kept or _trusted(kept[-1], trusted):
        address = kept[-1] if kept else peer
    return address, list(reversed(kept))


def believed_client(
    peer: str | None, request_headers: Sequence[tuple[bytes, bytes]], trusted: Sequence[Network]
) -> str:
    """The client address as :func:`client_info` believes it (its ``address``), without
    building the forwarding headers: for the access log of every request, whatever its
    outcome."""
    peer = peer or "unknown"
    if not _trusted(peer, trusted):
        return peer
    xff = [
        p.strip()
        for name, value in request_headers
        if name == b"x-forwarded-for"
        for p in value.decode("latin-1").split(",")
        if p.strip()
    ]
    return _believed(peer, xff, trusted)[0]


def client_info(
    peer: str | None,
    scheme: str,
    request_headers: Sequence[tuple[bytes, bytes]],
    trusted: Sequence[Network],
) -> ClientInfo:
    """Decide the client address and build the forwarding headers.

    Args:
        peer: the TCP peer's address (None when unknown, e.g. a Unix socket).
        scheme: ``http`` or ``https`` as the gateway received the request.
        request_headers: the client's raw headers (lower-case names, as ASGI gives them).
        trusted: networks of proxies whose ``X-Forwarded-*`` headers are believed.
    """
    peer = peer or "unknown"
    xff: list[str] = []
    proto = scheme
    host = b""
    via: list[bytes] = []
    for name, value in request_headers:
        if name == b"x-forwarded-for":
            xff.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
        elif name == b"x-forwarded-proto" and value in (b"http", b"https"):
            if _trusted(peer, trusted):
                proto = value.decode()
        elif name == b"host":
            host = value
        elif name == b"via":
            via.append(value)
    if _trusted(peer, trusted):
        address, chain = _believed(peer, xff, trusted)
    else:
        address, chain = peer, []
        via = []  # an untrusted peer's Via is its own claim
    chain.append(peer)
    headers = [
        (b"x-forwarded-for", ", ".join(chain).encode("latin-1")),
        (b"x-forwarded-proto", proto.encode()),
        (b"via", b", ".join([*via, VIA])),
    ]
    if host:
        headers.append((b"x-forwarded-host", host))
    return ClientInfo(address, tuple(headers))
