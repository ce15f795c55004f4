"""Each default has one definition: the components built with no arguments behave as the
config's defaults say (the config's values are the ones users are told, in docs/)."""

from __future__ import annotations

from gateway._config.model import (
    CircuitBreakerConfig,
    DefaultsConfig,
    OutlierDetectionConfig,
    StateConfig,
    UpstreamConfig,
)
from gateway._rules.balance import OutlierSettings
from gateway._rules.resilience import BreakerSettings
from gateway._state.store import MemoryStore, RedisStore
from gateway._upstream.transport import PoolLimits


def test_a_store_built_with_no_arguments_has_the_configs_state_defaults() -> None:
    state = StateConfig()
    redis = RedisStore("redis://127.0.0.1:1/0")
    assert redis.timeout_s == state.timeout == 0.1
    assert redis.namespace == state.key_prefix == "gw:"
    assert MemoryStore().max_bytes == state.memory_max_size == 64 * 1024 * 1024


def test_pool_limits_built_with_no_arguments_have_the_configs_upstream_defaults() -> None:
    limits = PoolLimits()
    assert limits.max_connections == DefaultsConfig().max_connections
    assert limits.idle_timeout_s == UpstreamConfig(url="http://h").idle_timeout


def test_a_breaker_built_with_no_arguments_has_the_configs_defaults() -> None:
    config = CircuitBreakerConfig()
    assert BreakerSettings() == BreakerSettings(
        consecutive_failures=config.consecutive_failures,
        failure_ratio=config.failure_ratio,
        window_s=config.window,
        min_requests=config.min_requests,
        open_for_s=config.open_for,
        half_open_requests=config.half_open_requests,
    )


def test_outlier_settings_built_with_no_arguments_have_the_configs_defaults() -> None:
    config = OutlierDetectionConfig()
    assert OutlierSettings() == OutlierSettings(
        consecutive_failures=config.consecutive_failures,
        ejection_s=config.ejection,
        max_ejection_s=config.max_ejection,
        max_ejected=config.max_ejected,
    )
