"""Who may read the admin routes, and on which listener (pure).

``/__gateway/health`` and ``/__gateway/ready`` are for load balancers: they answer anyone,
on every listener. The other admin routes (config, upstreams, state, metrics) reveal the
deployment, so they answer only peers in ``server.admin_allow``. The peer is the TCP
connection's address (the ASGI scope's ``client``), never ``X-Forwarded-For``: a header is
written by the client, and a trusted proxy forwards everyone's requests.

With ``server.admin_bind`` the private routes move to a listener of their own, found by
the connection's local address (the scope's ``server``): the public listener answers 404
for them, and the admin listener serves nothing but ``/__gateway/``.

Every admin route is read-only: GET, and HEAD wherever GET is allowed (RFC 9110 section
9.3.2). Another method is 405 with ``Allow`` (RFC 9110 section 15.5.6), another path under
``/__gateway/`` 404, both as the gateway's JSON error body like every other refusal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from .._errors import AdminForbidden, MethodNotAllowed, NotFound, RequestError
from .forwarded import Network

ADMIN_PREFIX = "/__gateway"
# the admin routes, by name: each is served at ADMIN_PREFIX/NAME (a trailing slash allowed)
ADMIN_ROUTES = ("health", "ready", "metrics", "config", "state", "upstreams")
ADMIN_METHODS = ("GET", "HEAD")
PUBLIC_ADMIN_PATHS = frozenset({f"{ADMIN_PREFIX}/health", f"{ADMIN_PREFIX}/ready"})
DEFAULT_ADMIN_ALLOW = ("127.0.0.0/8", "::1")
_ANY_HOST = frozenset({"", "0.0.0.0", "::", "*"})

Address = tuple[str, int]


@dataclass(frozen=True)
class Listener:
    """A listening address: ``host`` None matches any local address (a wildcard bind or a
    host name, which the socket resolves), so only the port decides."""

    host: str | None
    port: int

    def matches(self, local: Sequence[object] | None) -> bool:
        """Whether a connection whose local address is ``local`` came in on this listener."""
        if not local or len(local) < 2 or local[1] != self.port:
            return False
        return self.host is None or _same_ip(str(local[0]), self.host)


def parse_listener(bind: str) -> Listener:
    """``HOST:PORT`` (``[::1]:9901`` for IPv6) as a :class:`Listener`.

    Raises:
        ValueError: no port, or a port outside 0-65535.
    """
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{bind!r} is not HOST:PORT with a port from 0 to 65535")
    host = host.strip("[]")
    try:
        ip: str | None = str(ipaddress.ip_address(host))
    except ValueError:
        ip = None  # a name: the socket resolves it, the port alone tells listeners apart
    return Listener(None if host in _ANY_HOST else ip, int(port_text))


def _same_ip(a: str, b: str) -> bool:
    try:
        return _plain(ipaddress.ip_address(a)) == _plain(ipaddress.ip_address(b))
    except ValueError:
        return False


def _plain(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def peer_allowed(client: Sequence[object] | None, allow: Sequence[Network]) -> bool:
    """Whether the connection's peer (the scope's ``client``) is in ``allow``. Unknown
    peers (a Unix socket has none) are refused."""
    if not client:
        return False
    try:
        ip = _plain(ipaddress.ip_address(str(client[0]).strip("[]")))
    except ValueError:
        return False
    return any(ip in net for net in allow)


def admin_refusal(
    path: str,
    client: Sequence[object] | None,
    local: Sequence[object] | None,
    allow: Sequence[Network],
    listener: Listener | None,
) -> RequestError | None:
    """Why a request for ``path`` (decoded, under ``/__gateway/``) is refused, or None.

    Args:
        path: the request's decoded path.
        client: the scope's ``client`` (peer address).
        local: the scope's ``server`` (the listener's local address).
        allow: ``server.admin_allow``.
        listener: the admin listener, or None when the admin routes share the public one.
    """
    if path.rstrip("/") in PUBLIC_ADMIN_PATHS:
        return None
    if listener is not None and not listener.matches(local):
        return NotFound("no endpoint at this path")
    if not peer_allowed(client, allow):
        return AdminForbidden("admin routes answer only addresses in server.admin_allow")
    return None


def off_admin_listener(local: Sequence[object] | None, listener: Listener | None) -> bool:
    """Whether a non-admin request came in on the admin listener (it serves only admin)."""
    return listener is not None and listener.matches(local)


def admin_route_error(path: str, method: str) -> RequestError | None:
    """Why no admin route serves ``method`` on ``path`` (decoded, under ``/__gateway/``),
    or None when one does.

    Returns:
        NotFound: no admin route has this path.
        MethodNotAllowed: the route exists; ``allow`` is GET and HEAD.
    """
    name = path[len(ADMIN_PREFIX) + 1 :] if path.startswith(ADMIN_PREFIX + "/") else None
    if name is not None and name.endswith("/"):
        name = name[:-1]
    if name not in ADMIN_ROUTES:
        return NotFound("no admin route at this path")
    if method not in ADMIN_METHODS:
        return MethodNotAllowed(f"method {method} is not allowed here", allow=ADMIN_METHODS)
    return None
