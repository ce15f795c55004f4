"""What the backend calls of one client request may take from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._auth.rules import Identity
from .._rules.resilience import UpstreamGuard
from .._rules.transform import JSON
from .exchange import ByteBudget, unlimited_budget

if TYPE_CHECKING:
    from .._state.shared import SharedState
    from .pipeline import CallStats


@dataclass(frozen=True)
class CallContext:
    """What backend calls may take from the client request.

    ``query`` and ``headers`` feed ``{query.NAME}``/``{header.NAME}`` references and
    ``when:`` conditions; only ``forward_headers`` and ``extra_query`` are passed on as they
    are, because the config listed them.
    """

    params: Mapping[str, str]
    forward_headers: Sequence[tuple[bytes, bytes]] = ()
    extra_query: str = ""
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes | None = None  # the client's JSON body, as received
    json_body: JSON = None  # ... and parsed
    budget: ByteBudget = field(default_factory=unlimited_budget)
    client_address: str = ""  # as believed under server.trusted_proxies
    guards: Mapping[str, UpstreamGuard] = field(default_factory=dict)  # by guard_name
    state: SharedState | None = None  # caches and coalescing
    # each backend call's state (retries and hedges so far), by backend name, so that a
    # call cut by the deadline is still reported with them
    attempts: dict[str, CallStats] = field(default_factory=dict)
    # who the endpoint's auth policy verified the request as; None without auth
    identity: Identity | None = None
