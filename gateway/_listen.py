"""Checking, before any worker starts, that every listening address can be bound.

I/O at the edge: each ``HOST:PORT`` is bound once on a throwaway socket and closed again,
so a busy port or a bad address becomes one line (``gateway: cannot listen on
127.0.0.1:8000: address already in use``) and exit status 2 instead of a traceback from
inside hypercorn, or from every worker. The probe binds without ``SO_REUSEPORT``: several
workers share their port through it, so hypercorn's own bind would succeed next to another
gateway that also set it, and two gateways would silently split one port's traffic.

A port taken between the check and hypercorn's bind still fails there; the CLI reports
that as one line too.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from ._errors import ListenError

MAX_PORT = 65535
_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def split_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6, ``:8000`` for every interface) as a pair.

    Raises:
        ListenError: no port, or a port outside 0-65535.
    """
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ListenError(bind, "expected HOST:PORT")
    port = int(port_text)
    if port > MAX_PORT:
        raise ListenError(bind, f"port must be 0-{MAX_PORT}")
    return host.removeprefix("[").removesuffix("]"), port


def check_binds(binds: Iterable[str]) -> None:
    """Bind each TCP address once and release it; Unix sockets and ``fd://`` are skipped.

    Raises:
        ListenError: the first address that cannot be bound, with the reason in words.
    """
    for bind in binds:
        if bind.startswith(("unix:", "fd://")):
            continue
        host, port = split_bind(bind)
        # the same family hypercorn picks: IPv6 exactly when the host has a colon
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            infos = socket.getaddrinfo(
                host or None, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror:
            raise ListenError(bind, f"unknown host {host!r}") from None
        _, kind, proto, _, address = infos[0]
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except OSError as exc:
            reason = _REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()
            raise ListenError(bind, reason) from None


def listen_error_in(group: BaseExceptionGroup[BaseException]) -> ListenError | None:
    """The :class:`ListenError` inside a nursery's exception group, if there is one."""
    match, _ = group.split(ListenError)
    leaf: BaseException | None = match
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, ListenError) else None
