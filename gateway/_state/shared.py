"""Rate limits and caches at request time, over the configured store.

One :class:`SharedState` per worker, opened for the app's whole life (:func:`open_state`):
the store (:class:`~gateway._state.store.MemoryStore`, or :class:`~gateway._state.store.RedisStore`
with ``state.redis``), the coalescer of identical backend calls, and the rules that use
them. When the store fails, the gateway keeps answering: caches are skipped, rate limits
follow ``state.on_error``; the first failure and the recovery are logged once each, and
every failure is counted (``gateway_state_errors_total``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson

from .._auth.rules import Identity, claim_at
from .._config.model import StateConfig
from .._config.plan import EndpointPlan, RateLimitPlan
from .._errors import RateLimitUnavailable, RequestError, StoreUnavailable, TooManyRequests
from .._observability import metrics as metrics
from .._rules.headers import KEYED_FORWARDING
from .coalesce import Coalescer
from .limiter import Decision, format_policy, format_ratelimit, retry_after_s
from .store import MemoryStore, RedisStore, Store

log = logging.getLogger("gateway")

RawHeaders = Sequence[tuple[bytes, bytes]]
MAX_RAW_KEY_CHARS = 64  # longer key values (API keys, say) are stored hashed


@dataclass
class SharedState:
    """The worker's store and coalescer, and whether the store is failing now."""

    store: Store
    on_error: str = "open"
    shared: bool = False  # on Redis: every instance sees the same state
    flights: Coalescer[object] = field(default_factory=Coalescer)  # backend replies
    failing: bool = False

    # -- store calls that never raise: a failure is logged, counted and returns None --

    def _failed(self, operation: str, exc: StoreUnavailable) -> None:
        metrics.STATE_ERRORS.labels(operation).inc()
        if not self.failing:
            self.failing = True
            log.warning(
                "state store unavailable (%s): caches skipped, rate limits fail %s: %s",
                operation,
                self.on_error,
                exc,
            )

    def _ok(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("state store available again")

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.store.get(key)
        except StoreUnavailable as exc:
            self._failed("get", exc)
            return None
        self._ok()
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self.store.set(key, value, ttl_s)
        except StoreUnavailable as exc:
            self._failed("set", exc)
            return
        self._ok()

    # -- rate limits --

    async def check_rate_limits(
        self,
        endpoint: EndpointPlan,
        params: Mapping[str, str],
        query: Mapping[str, Sequence[str]],
        headers: RawHeaders,
        client_address: str,
        identity: Identity | None = None,
    ) -> tuple[list[tuple[bytes, bytes]], RequestError | None]:
        """Decide every limit of the endpoint, in config order, stopping at the first
        refusal (so a refused request does not count against the limits after it).

        Returns the ``RateLimit-Policy``/``RateLimit`` fields for the response, and the
        error to answer with instead (429, or 503 when the store failed and
        ``on_error`` is closed), or None.
        """
        policies: list[str] = []
        states: list[str] = []
        refusal: RequestError | None = None
        retry_after: int | None = None
        for plan in endpoint.rate_limits:
            key = rate_key(endpoint, plan, params, query, headers, client_address, identity)
            try:
                decision: Decision = await self.store.rate(key, plan.limit)
            except StoreUnavailable as exc:
                self._failed("rate", exc)
                if self.on_error == "closed":
                    refusal = RateLimitUnavailable("the rate limit cannot be checked right now")
                    break
                continue
            self._ok()
            policies.append(format_policy(plan.name, plan.limit))
            states.append(format_ratelimit(plan.name, decision))
            if not decision.allowed:
                metrics.RATE_LIMITED.labels(endpoint.path, plan.name).inc()
                retry_after = retry_after_s(decision)
                refusal = TooManyRequests(
                    f"over the rate limit {plan.name!r}; retry in {retry_after} s"
                )
                break
        fields: list[tuple[bytes, bytes]] = []
        if policies:
            fields.append((b"ratelimit-policy", ", ".join(policies).encode()))
            fields.append((b"ratelimit", ", ".join(states).encode()))
        if retry_after is not None:
            fields.append((b"retry-after", str(retry_after).encode()))
        return fields, refusal


def rate_key(
    endpoint: EndpointPlan,
    plan: RateLimitPlan,
    params: Mapping[str, str],
    query: Mapping[str, Sequence[str]],
    headers: RawHeaders,
    client_address: str,
    identity: Identity | None = None,
) -> str:
    """``rl:METHOD PATH:POLICY:VALUE``; requests without the header, query parameter or
    claim (``jwt:CLAIM``: a string or number at that dot path of the verified token's
    claims) share the value ``-``. A value longer than ``MAX_RAW_KEY_CHARS``, or with octets that
    are not UTF-8, goes in as ``#`` and its SHA-256 (hex)."""
    if plan.key_kind == "ip":
        value = client_address
    elif plan.key_kind == "global":
        value = ""
    elif plan.key_kind == "path":
        value = params.get(plan.key_name, "-")
    elif plan.key_kind == "query":
        values = query.get(plan.key_name)
        value = values[0] if values else "-"
    elif plan.key_kind == "jwt":
        claim = claim_at(identity.claims, plan.key_name.split(".")) if identity else None
        scalar = isinstance(claim, str | int | float) and not isinstance(claim, bool)
        value = str(claim) if scalar else "-"
    else:
        wanted = plan.key_name.encode("latin-1")
        found = [v for n, v in headers if n.lower() == wanted]
        value = b", ".join(found).decode("latin-1") if found else "-"
    if len(value) > MAX_RAW_KEY_CHARS or not _is_utf8_text(value):
        # Path and query values keep the client's octets (surrogate escapes for those that
        # are not UTF-8); a store's keys are UTF-8 text, so such a value goes in hashed.
        value = "#" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return f"rl:{endpoint.method} {endpoint.path}:{plan.name}:{value}"


def _is_utf8_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def endpoint_cache_key(
    endpoint: EndpointPlan,
    params: Mapping[str, str],
    query_string: bytes,
    query: Mapping[str, Sequence[str]],
    headers: RawHeaders,
    forwarded: RawHeaders = (),
    identity: Identity | None = None,
) -> str:
    """The aggregate cache's key: the endpoint and the values that may vary its answer,
    length-prefixed and hashed.

    On an endpoint with auth it holds the verified identity (its ``partition``, or ``-``),
    so one identity's cached answer is never given to another.

    Whatever the key, it holds the forwarding fields the gateway derives from the client
    request and sends upstream (``forwarded``, :data:`~gateway._rules.headers.KEYED_FORWARDING`:
    X-Forwarded-Host and -Proto), so a client's Host cannot poison another's answer.

    The default key holds every value the endpoint reads from the request (computed at
    load, :class:`~gateway._config.plan.RequestReads`): every path parameter, the raw query
    string (so every query value, forwarded or templated) and every header field a
    template, a ``when:`` condition or ``forward_headers`` reads. An explicit ``cache.key``
    holds the listed values instead (every value of a query parameter, in order). Header
    lines of one field are joined with ``, `` as templates see them; an absent field and
    an empty one differ.
    """
    cache = endpoint.cache
    assert cache is not None
    digest = hashlib.sha256()

    def part(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)

    def header(wanted: bytes) -> None:
        found = [v for n, v in headers if n.lower() == wanted]
        part(b"1" + b", ".join(found) if found else b"0")

    part(f"{endpoint.method} {endpoint.path}".encode())
    if endpoint.auth is not None:
        part((identity.partition if identity is not None else "-").encode("ascii"))
    for field_name in sorted(KEYED_FORWARDING):
        found = [v for n, v in forwarded if n.lower() == field_name]
        part(b"1" + b", ".join(found) if found else b"0")
    if cache.key is None:
        for name in sorted(params):
            part(name.encode())
            part(params[name].encode("utf-8", "surrogateescape"))
        part(query_string)
        for field_name in cache.vary_headers:
            header(field_name)
    else:
        for source, name in cache.key:
            if source == "path":
                part(params.get(name, "").encode("utf-8", "surrogateescape"))
            elif source == "query":
                values = query.get(name, ())
                part(len(values).to_bytes(4, "big"))
                for value in values:
                    part(value.encode("utf-8", "surrogateescape"))
            else:
                header(name.encode("latin-1"))
    return "agg:" + digest.hexdigest()


def bypasses_cache(endpoint: EndpointPlan, headers: RawHeaders) -> bool:
    """Whether a request must neither be served from nor stored in the aggregate cache:
    it carries Authorization or Cookie and ``cache.key`` does not name that field (RFC 9111
    section 3.5; see :data:`~gateway._config.plan.CREDENTIAL_HEADERS`)."""
    assert endpoint.cache is not None
    bypass = endpoint.cache.bypass_headers
    return bool(bypass) and any(name.lower() in bypass for name, _ in headers)


def pack(meta: object, body: bytes) -> bytes:
    """A stored entry: 4-byte length, JSON metadata, then the body as it was."""
    encoded = orjson.dumps(meta)
    return len(encoded).to_bytes(4, "big") + encoded + body


def unpack(entry: bytes) -> tuple[object, bytes] | None:
    """The metadata and body of an entry, or None for one that does not parse (written
    by another version, say): treated as a miss."""
    try:
        size = int.from_bytes(entry[:4], "big")
        return orjson.loads(entry[4 : 4 + size]), entry[4 + size :]
    except (orjson.JSONDecodeError, ValueError):
        return None


@asynccontextmanager
async def open_state(config: StateConfig) -> AsyncIterator[SharedState]:
    """The worker's state for its whole life. A Redis store is entered here, in the task
    that runs the app's lifespan, because its connections' tasks live in that task's
    nursery; it connects lazily, so an unreachable Redis never stops the worker starting."""
    if config.redis is None:
        async with MemoryStore(config.memory_max_size) as memory:
            yield SharedState(memory, config.on_error)
        return
    redis = RedisStore(config.redis, timeout_s=config.timeout, namespace=config.key_prefix)
    async with redis:
        yield SharedState(redis, config.on_error, shared=True)
