"""The state store behind rate limits and response caches: in process memory, or on Redis.

Both implement :class:`Store`. :class:`MemoryStore` is exact and never fails but is per
process (each worker counts alone). :class:`RedisStore` is shared by every worker and
gateway instance; it can fail, and then raises :exc:`~gateway._errors.StoreUnavailable`
so the caller decides: a rate limit fails open or closed, a cache is skipped.

RedisStore, on coredis (anyio-based, so it runs under trio):

- every call runs under its own deadline of ``timeout_s`` (100 ms by default); a call that
  must first open a connection can take up to twice that (see :class:`_ShieldedConnect`);
- a rate decision is one atomic Lua script (``EVALSHA``, falling back to ``EVAL`` when the
  server does not know the script, e.g. after a restart), with time taken from the
  server's ``TIME`` so that every instance agrees on "now"; the key expires (``PX``) once
  its state is no different from a fresh key's;
- after a timeout every pooled connection is dropped: a connection that missed a deadline
  may have a backlog of abandoned replies or a dead peer, and new connections are cheap.
  A store whose Redis went away recovers by itself when it comes back: each call simply
  tries a new connection.

A RedisStore is an async context manager: coredis runs each connection's reader and
writer in a task group that the entering task owns, so enter it in a long-lived parent
task (the app's lifespan) before request tasks use it.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import urlsplit

import coredis
import coredis.exceptions
import trio
from coredis.retry import ConstantRetryPolicy

from .._errors import StoreUnavailable
from .limiter import DEFAULT_MAX_KEYS, Decision, Limit, RateLimiter

if TYPE_CHECKING:
    from anyio.abc import ByteStream

T = TypeVar("T")

# Also the defaults of the config's ``state`` section (memory_max_size, timeout,
# key_prefix), which are what users are told: one definition, here.
DEFAULT_MEMORY_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 0.1
DEFAULT_NAMESPACE = "gw:"

# What one cache entry costs besides its key and value: the ordered dict's slot and link,
# the entry object, the str and bytes headers (about 290 bytes measured on CPython 3.11).
ENTRY_OVERHEAD_BYTES = 320
DEFAULT_MAX_CONNECTIONS = 8  # Redis connections; requests are pipelined on few
US_PER_S = 1_000_000


@dataclass(frozen=True)
class StoreStatistics:
    """What every store counts.

    Args:
        hits: ``get`` calls that found a value.
        misses: ``get`` calls that found none (absent or expired).
        sets: ``set`` calls that stored a value.
        rate_allowed: rate decisions that allowed the request.
        rate_denied: rate decisions that refused it.
        errors_total: calls that raised StoreUnavailable.
    """

    hits: int
    misses: int
    sets: int
    rate_allowed: int
    rate_denied: int
    errors_total: int


class Store(Protocol):
    """The state store: bytes with a time to live, and GCRA rate decisions."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None if there is none or it expired.

        Raises:
            StoreUnavailable: the store failed (never for MemoryStore).
        """
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds, replacing any value; a
        ``ttl_s`` that is not positive does nothing.

        Raises:
            StoreUnavailable: the store failed (never for MemoryStore).
        """
        ...

    async def rate(self, key: str, limit: Limit) -> Decision:
        """Decide one request of ``key`` under ``limit`` (see :mod:`gateway._state.limiter`);
        the store's own clock says when.

        Raises:
            StoreUnavailable: the store failed (never for MemoryStore).
        """
        ...

    async def close(self) -> None:
        """Release what the store holds; later calls raise StoreUnavailable (Redis) or
        find an empty store (memory)."""
        ...

    def statistics(self) -> StoreStatistics: ...


# --- Memory -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryStoreStatistics(StoreStatistics):
    """Args:
    entries: values stored now (some may have expired and not yet been dropped).
    used_bytes: their accounted size: key, value and ``ENTRY_OVERHEAD_BYTES`` each.
    max_bytes: the bound on ``used_bytes``.
    evicted_total: values dropped, least recently used first, to stay under the bound.
    expired_total: values dropped because their time to live had passed.
    rate_keys: keys with rate limit state now.
    rate_evicted_total: rate limit keys dropped to stay under ``max_rate_keys``.
    """

    entries: int
    used_bytes: int
    max_bytes: int
    evicted_total: int
    expired_total: int
    rate_keys: int
    rate_evicted_total: int


class _Entry:
    __slots__ = ("expires_at", "size", "value")

    def __init__(self, value: bytes, expires_at: float, size: int) -> None:
        self.value = value
        self.expires_at = expires_at
        self.size = size


class MemoryStore:
    """A store in this process's memory, bounded by bytes.

    Values live in an LRU: past ``max_bytes`` the least recently used are dropped. An
    expired value is dropped when it is next read or when the LRU reaches it. Rate limit
    state lives in a separate :class:`~gateway._state.limiter.RateLimiter` of at most
    ``max_rate_keys`` keys. Nothing here awaits anything, so every operation is atomic
    among trio tasks.

    Args:
        max_bytes: the bound on stored keys, values and their overhead together.
        max_rate_keys: the bound on keys with rate limit state.
        clock: seconds on a monotonic clock; ``trio.current_time`` by default.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MEMORY_MAX_BYTES,
        *,
        max_rate_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self.max_bytes = max_bytes
        self._clock = clock or trio.current_time
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._used_bytes = 0
        self._limiter = RateLimiter(max_rate_keys)
        self._hits = 0
        self._misses = 0
        self._sets = 0
        self._evicted_total = 0
        self._expired_total = 0

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        if entry.expires_at <= self._clock():
            self._remove(key, entry)
            self._expired_total += 1
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry.value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if not ttl_s > 0:
            return
        old = self._entries.get(key)
        if old is not None:
            self._remove(key, old)
        size = len(key.encode("utf-8", "surrogatepass")) + len(value) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:  # never fits: the outdated value is gone all the same
            return
        self._entries[key] = _Entry(value, self._clock() + ttl_s, size)
        self._used_bytes += size
        self._sets += 1
        while self._used_bytes > self.max_bytes:
            lru_key, lru = next(iter(self._entries.items()))
            self._remove(lru_key, lru)
            self._evicted_total += 1

    async def rate(self, key: str, limit: Limit) -> Decision:
        return self._limiter.decide(key, limit, self._clock())

    async def close(self) -> None:
        self._entries.clear()
        self._used_bytes = 0
        self._limiter.clear()

    def _remove(self, key: str, entry: _Entry) -> None:
        del self._entries[key]
        self._used_bytes -= entry.size

    def statistics(self) -> MemoryStoreStatistics:
        limiter = self._limiter.statistics()
        return MemoryStoreStatistics(
            hits=self._hits,
            misses=self._misses,
            sets=self._sets,
            rate_allowed=limiter.allowed_total,
            rate_denied=limiter.denied_total,
            errors_total=0,
            entries=len(self._entries),
            used_bytes=self._used_bytes,
            max_bytes=self.max_bytes,
            evicted_total=self._evicted_total,
            expired_total=self._expired_total,
            rate_keys=limiter.keys,
            rate_evicted_total=limiter.evicted_total,
        )


# --- Redis ------------------------------------------------------------------------------

# GCRA as in gateway._state.limiter, in integer microseconds of the Redis server's clock.
# KEYS[1]: the key's theoretical arrival time (TAT); ARGV[1]: the emission interval (us);
# ARGV[2]: the burst. Returns {allowed (0 or 1), remaining, reset_us, retry_after_us}.
# Lua numbers are doubles: exact for integers below 2^53 (microseconds since 1970 are
# about 2^51), but tostring() keeps only 14 digits, so the TAT is written with %.0f.
GCRA_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now <= tolerance then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
             'PX', math.ceil((new_tat - now) / 1000))
  return {1, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now, 0}
end
return {0, 0, tat - now, new_tat - tolerance - now}
"""
GCRA_SHA1 = hashlib.sha1(GCRA_SCRIPT.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RedisStoreStatistics(StoreStatistics):
    """Args:
    timeouts_total: calls that got no answer within ``timeout_s``.
    script_loads_total: rate decisions that had to send the whole script (EVAL).
    last_error: the most recent failure, for humans; None if there was none.
    """

    timeouts_total: int
    script_loads_total: int
    last_error: str | None


class _ShieldedConnect(coredis.TCPConnection):
    """A TCP connection whose connect cannot be cancelled from outside.

    coredis 6.9's pool loses a connection slot for good when a caller's cancellation
    lands in the TCP connect: after ``max_connections`` such connects (an unreachable
    Redis whose packets are dropped, with callers' deadlines shorter than the connect)
    every later call would wait forever for a slot. Shielded, the connect ends by itself
    within coredis's ``connect_timeout`` with an error that gives the slot back, and the
    caller's cancellation is delivered at the next checkpoint.
    """

    async def _connect(self) -> ByteStream:
        with trio.CancelScope(shield=True):
            stream = await super()._connect()
        return stream


class RedisStore:
    """A store on Redis (or a server speaking its protocol), shared by every instance.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://`` for TLS).
        timeout_s: the deadline of each call; a call that must open a connection first
            can take up to twice this.
        namespace: prefixed to every key, so several gateways can share a database.
        max_connections: the pool's bound; requests are pipelined on few connections.

    Raises:
        ValueError: a URL that is not ``redis://`` or ``rediss://``, or a bad number.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        namespace: str = DEFAULT_NAMESPACE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"invalid Redis URL {url!r}: write redis://host:port/db")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number, not {timeout_s}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.url = url
        self.timeout_s = timeout_s
        self.namespace = namespace
        self.max_connections = max_connections
        self._client: coredis.Redis[bytes] | None = None
        self._stack: AsyncExitStack | None = None
        self._closed = False
        self._hits = 0
        self._misses = 0
        self._sets = 0
        self._rate_allowed = 0
        self._rate_denied = 0
        self._errors_total = 0
        self._timeouts_total = 0
        self._script_loads_total = 0
        self._last_error: str | None = None

    async def __aenter__(self) -> RedisStore:
        if self._stack is not None or self._closed:
            raise RuntimeError("a RedisStore can be entered only once")
        pool = coredis.ConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            connect_timeout=self.timeout_s,
        )
        if pool.connection_class is coredis.TCPConnection:
            pool.connection_class = _ShieldedConnect
        client: coredis.Redis[bytes] = coredis.Redis(
            connection_pool=pool,
            decode_responses=False,
            # One immediate retry on a connection that died while idle in the pool; the
            # call's own deadline bounds it.
            retry_policy=ConstantRetryPolicy(
                (coredis.exceptions.ConnectionError,), retries=1, delay=0
            ),
        )
        stack = AsyncExitStack()
        await stack.enter_async_context(client)
        self._client, self._stack = client, stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        await self.close()
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        try:
            await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # coredis's task group (a trio nursery) wraps the body's own exception in a
            # group; hand it on unwrapped, as any other context manager would.
            if exc is not None and list(group.exceptions) == [exc]:
                return False
            raise
        return False

    async def get(self, key: str) -> bytes | None:
        full = self.namespace + key
        value = await self._call("GET", lambda client: client.get(full))
        if value is None:
            self._misses += 1
        else:
            self._hits += 1
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if not ttl_s > 0:
            return
        full, ttl_ms = self.namespace + key, max(1, math.ceil(ttl_s * 1000))
        await self._call("SET", lambda client: client.set(full, value, px=ttl_ms))
        self._sets += 1

    async def rate(self, key: str, limit: Limit) -> Decision:
        keys = [self.namespace + "rate:" + key]
        interval_us = max(1, math.ceil(US_PER_S / limit.rate_per_s))
        args = [str(interval_us), str(limit.burst)]

        async def gcra(client: coredis.Redis[bytes]) -> object:
            try:
                return await client.evalsha(GCRA_SHA1, keys=keys, args=args)
            except coredis.exceptions.NoScriptError:
                self._script_loads_total += 1
                return await client.eval(GCRA_SCRIPT, keys=keys, args=args)

        reply = await self._call("GCRA", gcra)
        if not (isinstance(reply, list) and len(reply) == 4 and all(type(n) is int for n in reply)):
            raise self._failed(f"unexpected reply to the GCRA script: {reply!r}")
        allowed, remaining, reset_us, retry_after_us = reply
        if allowed:
            self._rate_allowed += 1
        else:
            self._rate_denied += 1
        return Decision(
            allowed=bool(allowed),
            limit=limit.burst,
            remaining=remaining,
            reset_s=reset_us / US_PER_S,
            retry_after_s=retry_after_us / US_PER_S,
        )

    async def close(self) -> None:
        self._closed = True
        if self._client is not None:
            self._client.connection_pool.disconnect()

    async def _call(self, what: str, op: Callable[[coredis.Redis[bytes]], Awaitable[T]]) -> T:
        """Run one operation under the deadline; any failure becomes StoreUnavailable."""
        client = self._client
        if client is None or self._closed:
            if not self._closed:
                raise RuntimeError("enter the RedisStore (async with) before using it")
            raise self._failed(f"{what}: the store is closed")
        error: Exception | None = None
        with trio.move_on_after(self.timeout_s) as scope:
            try:
                return await op(client)
            except Exception as exc:  # coredis, socket and protocol errors alike
                error = exc
        # A handshake cut short by the deadline surfaces as a ConnectionError (below).
        if scope.cancelled_caught or trio.current_time() >= scope.deadline:
            self._timeouts_total += 1
            client.connection_pool.disconnect()
            failure = self._failed(f"{what}: no answer within {self.timeout_s * 1000:g} ms")
        else:
            failure = self._failed(f"{what}: {type(error).__name__}: {error}")
        # coredis turns a cancellation that lands in a connection handshake into a
        # ConnectionError: give an enclosing cancelled scope its Cancelled back.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise failure from error

    def _failed(self, message: str) -> StoreUnavailable:
        self._errors_total += 1
        self._last_error = message
        return StoreUnavailable(f"Redis store {self._where()}: {message}")

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 6379}"

    def statistics(self) -> RedisStoreStatistics:
        return RedisStoreStatistics(
            hits=self._hits,
            misses=self._misses,
            sets=self._sets,
            rate_allowed=self._rate_allowed,
            rate_denied=self._rate_denied,
            errors_total=self._errors_total,
            timeouts_total=self._timeouts_total,
            script_loads_total=self._script_loads_total,
            last_error=self._last_error,
        )
