"""Rules of the WebSocket relay (RFC 6455), pure: which handshake fields cross the gateway,
whose origin may open a socket, and which close code each side is sent.

The relay is two WebSocket connections, the client's and the upstream's, joined by the
gateway; each hop has its own handshake, pings and close handshake (RFC 6455 sections 4,
5.5 and 7). What crosses:

- **Handshake fields.** The fields of the WebSocket handshake itself (``Sec-WebSocket-*``,
  ``Upgrade``, ``Connection``) belong to one hop and are made anew for the other; the
  client's offered subprotocols go upstream and the upstream's choice comes back
  (section 4.2.2); extensions are negotiated on neither hop (see
  :data:`EXTENSIONS_NEGOTIATED`).
- **Close codes.** Each side's close code and reason go to the other side as they are
  (:func:`code_for_upstream`, :func:`code_for_client`), except those section 7.4.1 forbids
  in a close frame: 1005 (no code) is sent as a close frame without one; 1006 (the
  connection dropped without a close frame) is passed on as a drop where the gateway can
  drop the connection (upstream), else as 1011 (see :func:`code_for_client`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .cors import CorsPolicy
from .headers import RawHeaders

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_MAX_CONNECTIONS = 1000

# RFC 6455 section 7.4.1, and the IANA registry it set up
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_STATUS_RECEIVED = 1005  # never in a frame: "the close frame had no code"
ABNORMAL_CLOSURE = 1006  # never in a frame: "the connection dropped without one"
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TLS_HANDSHAKE_FAILED = 1015  # never in a frame

EXTENSIONS_NEGOTIATED = False
"""permessage-deflate (RFC 7692) is offered on neither hop: a compressed frame's size says
nothing of what it inflates to (a 1 MiB frame can inflate to about 1 GiB before any
message limit is checked), and a relay that inflated one side's messages to deflate them
again for the other would pay twice for bytes it only passes on."""

# Fields of the handshake itself: made by each hop for its own connection (RFC 6455
# section 4.1 and 4.2.2), never copied across. Lower-case, as ASGI and h11 give names.
HANDSHAKE_FIELDS = frozenset(
    {
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
"""Header names (lower-case) that never cross the relay: each hop's handshake makes its
own."""

# RFC 9110 section 5.6.2
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 9110 token, as every subprotocol name must be (RFC 6455
    section 4.1, item 10)."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return False
    return bool(raw) and all(c in _TCHAR for c in raw)


def invalid_subprotocol(offered: Sequence[str]) -> str | None:
    """The first subprotocol the client offered that is not a token (RFC 6455 section
    4.1), or None when all are. Empty elements are not offers (RFC 9110 section 5.6.1.2:
    a recipient ignores them); see :func:`offered_subprotocols`."""
    for name in offered:
        if name and not is_token(name):
            return name
    return None


def offered_subprotocols(listed: Sequence[str]) -> list[str]:
    """The subprotocols a client offered, once each, in its order, without the empty list
    elements RFC 9110 section 5.6.1.2 has a recipient ignore."""
    return [name for name in dict.fromkeys(listed) if name]


def origin_allowed(policy: CorsPolicy | None, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an upgrade request with these fields may open the socket (RFC 6455 section
    10.2: a server decides by ``Origin`` which pages may connect).

    No policy: any request. With one: a request without ``Origin`` (a client that is not a
    browser; browsers always send it on a WebSocket handshake) is allowed; one ``Origin``
    must be allowed by the policy; several are refused (no browser sends that)."""
    if policy is None:
        return True
    origins = [value for name, value in headers if name == b"origin"]
    if not origins:
        return True
    if len(origins) > 1:
        return False
    return policy.allows(origins[0].decode("latin-1"))


def without_handshake_fields(headers: Iterable[tuple[bytes, bytes]]) -> RawHeaders:
    """``headers`` without the fields of one hop's handshake (:data:`HANDSHAKE_FIELDS`)."""
    return [(name, value) for name, value in headers if name.lower() not in HANDSHAKE_FIELDS]


def code_for_upstream(client_code: int) -> int | None:
    """The close code to send upstream when the client's side ended with ``client_code``;
    None: drop the upstream connection without a close frame, as the client's was (1006),
    so the upstream sees what it would have seen from the client directly."""
    if client_code in (ABNORMAL_CLOSURE, TLS_HANDSHAKE_FAILED):
        return None
    return client_code


def code_for_client(upstream_code: int | None) -> int:
    """The close code to send the client when the upstream's side ended with
    ``upstream_code`` (None: it dropped the connection, or broke the protocol).

    A drop becomes 1011 (internal error): the gateway cannot drop the client's connection
    without a close frame (the ASGI server sends one), and 1014 (bad gateway), registered
    later for exactly this, is refused as a protocol error by wsproto 1.3, so by clients
    built on it."""
    if upstream_code is None or upstream_code in (ABNORMAL_CLOSURE, TLS_HANDSHAKE_FAILED):
        return INTERNAL_ERROR
    return upstream_code
