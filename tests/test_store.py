"""The state store: MemoryStore on an injected clock, and RedisStore against a real
redis-server that each test starts on a free loopback port (and kills, restarts, stops
or makes unreachable to see the store fail fast and recover by itself)."""

from __future__ import annotations

import shutil
import socket
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
import trio
from redis_server import RedisServer, free_port

from gateway._errors import GatewayError, StoreUnavailable
from gateway._state.limiter import Limit
from gateway._state.store import ENTRY_OVERHEAD_BYTES, MemoryStore, RedisStore, Store

TIMEOUT_S = 0.05
# A call ends within timeout_s, or twice that when it opens a connection; plus scheduling.
FAIL_FAST_S = 2 * TIMEOUT_S + 0.1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- MemoryStore ------------------------------------------------------------------------


async def test_memory_store_is_a_store() -> None:
    store: Store = MemoryStore(clock=FakeClock())
    await store.set("k", b"v", 1)
    assert await store.get("k") == b"v"
    assert await store.get("other") is None
    stats = store.statistics()
    assert (stats.hits, stats.misses, stats.sets, stats.errors_total) == (1, 1, 1, 0)


async def test_a_value_expires_after_its_ttl() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    await store.set("k", b"value", ttl_s=10)
    clock.now += 9.999
    assert await store.get("k") == b"value"
    clock.now += 0.001
    assert await store.get("k") is None
    stats = store.statistics()
    assert (stats.expired_total, stats.entries, stats.used_bytes) == (1, 0, 0)


async def test_a_value_without_a_positive_ttl_is_not_stored() -> None:
    store = MemoryStore(clock=FakeClock())
    await store.set("k", b"old", 10)
    await store.set("k", b"new", 0)
    await store.set("other", b"new", -1)
    assert await store.get("k") == b"old"
    assert await store.get("other") is None
    assert store.statistics().sets == 1


async def test_replacing_a_value_accounts_its_bytes_once() -> None:
    store = MemoryStore(clock=FakeClock())
    await store.set("k", b"x" * 100, 10)
    await store.set("k", b"y" * 10, 10)
    stats = store.statistics()
    assert stats.entries == 1
    assert stats.used_bytes == len("k") + 10 + ENTRY_OVERHEAD_BYTES


async def test_a_value_larger_than_the_whole_store_is_not_stored() -> None:
    store = MemoryStore(max_bytes=1000, clock=FakeClock())
    await store.set("small", b"s", 10)
    await store.set("huge", b"old", 10)
    await store.set("huge", b"h" * 1000, 10)
    assert await store.get("huge") is None  # not the outdated value either
    assert await store.get("small") == b"s"


async def test_a_flood_of_distinct_keys_stays_within_max_bytes() -> None:
    max_bytes = 256 * 1024
    store = MemoryStore(max_bytes=max_bytes, clock=FakeClock())
    value = b"v" * 200
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            await store.set(f"cache:{i:064x}", bytes(value), 60)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = store.statistics()
    assert stats.used_bytes <= max_bytes
    assert stats.entries < 500 and stats.evicted_total == 20_000 - stats.entries
    assert grown < 1.2 * max_bytes  # the accounting matches what Python really holds
    assert await store.get(f"cache:{19_999:064x}") == value  # the newest survive
    assert await store.get(f"cache:{0:064x}") is None  # the oldest went first


async def test_eviction_drops_the_least_recently_used() -> None:
    per_entry = 1 + 1 + ENTRY_OVERHEAD_BYTES
    store = MemoryStore(max_bytes=3 * per_entry, clock=FakeClock())
    for key in "abc":
        await store.set(key, b"v", 10)
    assert await store.get("a") == b"v"  # "a" is now the most recently used
    await store.set("d", b"v", 10)  # evicts "b"
    assert [await store.get(key) for key in "abcd"] == [b"v", None, b"v", b"v"]


async def test_memory_rate_limits_follow_the_injected_clock() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    limit = Limit(rate_per_s=1, burst=2)
    assert [(await store.rate("k", limit)).allowed for _ in range(3)] == [True, True, False]
    clock.now += 1
    assert (await store.rate("k", limit)).allowed
    stats = store.statistics()
    assert (stats.rate_allowed, stats.rate_denied, stats.rate_keys) == (3, 1, 1)


async def test_memory_rate_keys_are_bounded() -> None:
    store = MemoryStore(max_rate_keys=10, clock=FakeClock())
    for i in range(1000):
        await store.rate(f"client-{i}", Limit(1, 1))
    stats = store.statistics()
    assert stats.rate_keys == 10 and stats.rate_evicted_total == 990


async def test_close_empties_the_memory_store() -> None:
    async with MemoryStore(clock=FakeClock()) as store:
        await store.set("k", b"v", 10)
    assert await store.get("k") is None


# --- A real redis-server ------------------------------------------------------------------


@contextmanager
def fails_fast() -> Iterator[None]:
    """The block raises StoreUnavailable, and does so within FAIL_FAST_S."""
    start = trio.current_time()
    with pytest.raises(StoreUnavailable):
        yield
    assert trio.current_time() - start < FAIL_FAST_S


# --- RedisStore -------------------------------------------------------------------------


async def test_redis_values_round_trip_and_expire(redis: RedisServer) -> None:
    with trio.fail_after(5):
        async with RedisStore(redis.url, timeout_s=TIMEOUT_S) as store:
            await store.set("k", b"\x00binary\xff", ttl_s=0.2)
            await store.set("never", b"x", ttl_s=0)
            assert await store.get("k") == b"\x00binary\xff"
            assert await store.get("never") is None
            await trio.sleep(0.3)
            assert await store.get("k") is None
            stats = store.statistics()
            assert (stats.hits, stats.misses, stats.sets, stats.errors_total) == (1, 2, 1, 0)


async def test_redis_namespaces_keep_gateways_apart(redis: RedisServer) -> None:
    with trio.fail_after(5):
        async with (
            RedisStore(redis.url, namespace="a:") as a,
            RedisStore(redis.url, namespace="b:") as b,
        ):
            await a.set("k", b"from a", 10)
            assert await b.get("k") is None
            assert await a.get("k") == b"from a"


async def test_redis_rate_limit_is_exact_across_two_instances(redis: RedisServer) -> None:
    limit = Limit(rate_per_s=1 / 3600, burst=50)  # nothing comes back during the test
    decisions = []

    async def decide(store: RedisStore) -> None:
        decisions.append(await store.rate("client-1", limit))

    with trio.fail_after(10):
        async with (
            RedisStore(redis.url, timeout_s=1) as first,
            RedisStore(redis.url, timeout_s=1) as second,
        ):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(decide, first if i % 2 else second)
            stats = [first.statistics(), second.statistics()]
    allowed = [d for d in decisions if d.allowed]
    assert len(decisions) == 200 and len(allowed) == 50
    assert sorted(d.remaining for d in allowed) == list(range(50))  # each slot once: atomic
    assert all(d.retry_after_s > 0 for d in decisions if not d.allowed)
    assert sum(s.rate_allowed for s in stats) == 50 and sum(s.rate_denied for s in stats) == 150


async def test_redis_rate_limit_lets_requests_through_again_at_the_rate(
    redis: RedisServer,
) -> None:
    limit = Limit(rate_per_s=20, burst=1)
    with trio.fail_after(5):
        async with RedisStore(redis.url, timeout_s=1) as store:
            assert (await store.rate("k", limit)).allowed
            refused = await store.rate("k", limit)
            assert not refused.allowed and 0 < refused.retry_after_s <= 0.05
            await trio.sleep(refused.retry_after_s + 0.005)
            assert (await store.rate("k", limit)).allowed


async def test_redis_killed_fails_fast_and_a_restart_recovers_by_itself(
    redis: RedisServer,
) -> None:
    limit = Limit(rate_per_s=1 / 3600, burst=5)
    with trio.fail_after(15):
        async with RedisStore(redis.url, timeout_s=TIMEOUT_S) as store:
            await store.set("k", b"v", 60)
            assert (await store.rate("r", limit)).remaining == 4

            await redis.kill()
            with fails_fast():
                await store.get("k")
            with fails_fast():
                await store.set("k", b"v", 60)
            with fails_fast():
                await store.rate("r", limit)
            assert store.statistics().errors_total == 3

            await redis.start()  # same port, empty, without the script
            loads = store.statistics().script_loads_total
            assert await store.get("k") is None
            assert (await store.rate("r", limit)).remaining == 4
            assert store.statistics().script_loads_total == loads + 1
            assert (await store.rate("r", limit)).remaining == 3  # EVALSHA works again


async def test_redis_that_stops_answering_times_out_and_recovers(redis: RedisServer) -> None:
    with trio.fail_after(15):
        async with RedisStore(redis.url, timeout_s=TIMEOUT_S) as store:
            await store.set("k", b"v", 60)
            redis.pause()
            try:
                for _ in range(3):
                    start = trio.current_time()
                    with fails_fast():
                        await store.get("k")
                    assert trio.current_time() - start >= TIMEOUT_S
            finally:
                redis.resume()
            stats = store.statistics()
            assert stats.timeouts_total == 3 and stats.errors_total == 3
            assert stats.last_error is not None and "no answer within 50 ms" in stats.last_error
            assert await store.get("k") == b"v"


async def test_an_unreachable_redis_never_exhausts_the_connection_pool() -> None:
    # A listener that never accepts and whose queue is full: connects hang, as they do
    # when a host drops packets.
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    server = RedisServer(port)
    try:
        with trio.fail_after(15):
            async with RedisStore(server.url, timeout_s=TIMEOUT_S, max_connections=2) as store:
                for _ in range(6):  # three times the pool's size
                    with fails_fast():
                        await store.get("k")
                listener.close()
                for filler in fillers:
                    filler.close()
                await server.start()
                await store.set("k", b"back", 60)
                assert await store.get("k") == b"back"
    finally:
        listener.close()
        for filler in fillers:
            filler.close()
        await server.kill()


async def test_a_closed_redis_store_is_unavailable(redis: RedisServer) -> None:
    with trio.fail_after(5):
        async with RedisStore(redis.url) as store:
            await store.close()
            with pytest.raises(StoreUnavailable, match="closed"):
                await store.get("k")
    assert issubclass(StoreUnavailable, GatewayError)


async def test_a_redis_store_must_be_entered_before_use() -> None:
    store: Store = RedisStore("redis://127.0.0.1:1/0")
    with pytest.raises(RuntimeError, match="async with"):
        await store.get("k")


async def test_the_body_exception_leaves_a_redis_store_unwrapped(redis: RedisServer) -> None:
    with trio.fail_after(5), pytest.raises(KeyError):
        async with RedisStore(redis.url):
            raise KeyError("not wrapped in a group")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://", "unix:///tmp/redis.sock"]
)
def test_a_redis_url_must_name_a_host(url: str) -> None:
    with pytest.raises(ValueError, match="invalid Redis URL"):
        RedisStore(url)


def test_redis_server_is_installed() -> None:
    # The Redis tests fail rather than skip without it; say so plainly, once.
    assert shutil.which("redis-server"), "apt-get install -y redis-server"
