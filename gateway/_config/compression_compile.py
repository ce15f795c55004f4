"""Compiling ``compression`` (in ``defaults`` and per endpoint) into each endpoint's
:class:`~gateway._rules.encoding.CompressionPolicy`, at load.

Every problem is collected with its path: an unknown algorithm, one listed twice, an empty
list; a level of an unknown algorithm or of one not listed, or outside the library's
range; a media type pattern that is not one, or one listed twice. A problem of
``defaults`` is reported once, not again on every endpoint using them.

Here too the endpoint's ``Vary: Accept-Encoding`` (RFC 9110 section 12.5.5) becomes one of
its static response fields, merged into a configured ``Vary``, so that a request without
Accept-Encoding pays nothing more; where an upstream's Vary can reach the answers
(passthrough, or a backend's ``return_headers``) it is merged into that one per response
instead (``CompressionPolicy.merge_vary``), as one field.
"""

from __future__ import annotations

from dataclasses import replace

from .._errors import ConfigProblem
from .._rules.encoding import (
    DEFAULT_LEVELS,
    LEVEL_RANGES,
    CompressionPolicy,
    TypePatterns,
    merged_vary,
    type_pattern_problem,
)
from .load import format_path
from .model import CompressionConfig, EndpointConfig, GatewayConfig
from .plan import EndpointPlan

_NAMES = {"br": "brotli", "zstd": "zstd", "gzip": "gzip"}


def compile_compression(
    config: GatewayConfig,
    endpoints: list[EndpointPlan],
    file: str,
    problems: list[ConfigProblem],
) -> list[EndpointPlan]:
    """``endpoints`` with their compression; the problems of every endpoint's settings
    (also of endpoints left out for other problems) are added to ``problems``."""
    setting = config.defaults.compression
    defaults = (
        None
        if setting is False
        else _policy(
            setting if isinstance(setting, CompressionConfig) else CompressionConfig(),
            ("defaults", "compression"),
            file,
            problems,
        )
    )
    policies: dict[int, CompressionPolicy | None] = {}
    for index, endpoint in enumerate(config.endpoints):
        policies[index] = _endpoint_policy(endpoint, index, defaults, file, problems)
    return [_with_policy(ep, policies[ep.index], config.endpoints[ep.index]) for ep in endpoints]


def _endpoint_policy(
    endpoint: EndpointConfig,
    index: int,
    defaults: CompressionPolicy | None,
    file: str,
    problems: list[ConfigProblem],
) -> CompressionPolicy | None:
    own = endpoint.compression
    if own is None:
        return defaults
    if own is False:
        return None
    if own is True:
        if defaults is not None:
            return defaults
        return _policy(CompressionConfig(), (), file, [])  # the built-in settings
    return _policy(own, ("endpoints", index, "compression"), file, problems)


def _with_policy(
    ep: EndpointPlan, policy: CompressionPolicy | None, config: EndpointConfig
) -> EndpointPlan:
    """The endpoint with its policy, and its static Vary where no upstream's can arrive."""
    if policy is None:
        return ep
    upstream_vary = config.passthrough or any(b"vary" in b.return_headers for b in ep.backends)
    if upstream_vary and b"vary" not in ep.removed_fields:
        # the static fields are added before the compression wrapper sees the head: it
        # merges them, the upstream's and Accept-Encoding into one field per response
        return replace(ep, compression=replace(policy, merge_vary=True))
    static = [v for n, v in ep.response_fields if n.lower() == b"vary"]
    fields = [(n, v) for n, v in ep.response_fields if n.lower() != b"vary"]
    name = next((n for n, _ in ep.response_fields if n.lower() == b"vary"), b"vary")
    fields.append((name, merged_vary(static)))
    return replace(ep, compression=policy, response_fields=tuple(fields))


def _policy(
    settings: CompressionConfig,
    where: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
) -> CompressionPolicy | None:
    """The compiled settings; None when they have a problem (recorded)."""
    found = len(problems)

    def problem(key: tuple[int | str, ...], message: str) -> None:
        problems.append(ConfigProblem(file, format_path((*where, *key)), message))

    codings: list[str] = []
    if not settings.algorithms:
        problem(("algorithms",), "empty: to turn compression off, write compression: false")
    for i, name in enumerate(settings.algorithms):
        coding = name.lower()
        if coding not in LEVEL_RANGES:
            problem(
                ("algorithms", i),
                f"unknown algorithm {name!r}: the gateway compresses with "
                + ", ".join(LEVEL_RANGES),
            )
        elif coding in codings:
            problem(("algorithms", i), f"{name} is listed twice")
        else:
            codings.append(coding)
    levels = dict(DEFAULT_LEVELS)
    for name, level in settings.levels.items():
        coding = name.lower()
        if coding not in LEVEL_RANGES:
            problem(("levels", name), f"unknown algorithm {name!r}")
        elif coding not in codings:
            problem(("levels", name), f"{name} is not in algorithms")
        else:
            low, high = LEVEL_RANGES[coding]
            if not low <= level <= high:
                problem(("levels", name), f"{_NAMES[coding]} levels go from {low} to {high}")
            levels[coding] = level
    patterns: list[str] = []
    if not settings.types:
        problem(("types",), "empty: to turn compression off, write compression: false")
    for i, pattern in enumerate(settings.types):
        lower = pattern.strip().lower()
        why = type_pattern_problem(lower)
        if why is not None:
            problem(("types", i), f"not a media type pattern: write {why}")
        elif lower in patterns:
            problem(("types", i), f"{pattern} is listed twice")
        else:
            patterns.append(lower)
    if len(problems) > found:
        return None
    return CompressionPolicy(
        codings=tuple(codings),
        levels=tuple(levels[c] for c in codings),
        min_size_bytes=settings.min_size,
        types=TypePatterns(patterns),
    )
