"""Compiling ``cors:`` settings into :class:`~gateway._rules.cors.CorsPolicy` (at load).

Every problem is collected with its file and path: an origin that is not one as browsers
send it (a path, a trailing slash, a query, user information: the message says what to
write instead), ``null``, a pattern that does not compile or that matches origins nobody
listed while credentials are allowed, ``*`` beside other origins or with
``allow_credentials`` (Fetch standard, "CORS protocol and credentials": browsers refuse
such an answer), header names that are not tokens (RFC 9110 section 5.6.2), and
``expose_headers: ["*"]`` with credentials (a browser then reads it as a field named
``*``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .._errors import ConfigProblem
from .._rules.cors import CorsPolicy, parse_origin
from .load import format_path
from .model import CorsConfig
from .plan import TOKEN

Where = tuple[int | str, ...]
REGEX_PREFIX = "regex:"
# Origins no config means to allow: a pattern that matches one of them with credentials
# lets any site read answers made with its visitors' cookies and tokens.
_FOREIGN_ORIGINS = ("https://example.invalid", "http://example.invalid", "null")


def compile_cors(
    config: CorsConfig,
    method: str,
    where: Where,
    file: str,
    problems: list[ConfigProblem],
) -> CorsPolicy:
    """The policy of an endpoint of ``method`` with these settings (at ``where``); the
    problems found are added to ``problems`` (the policy is then not to be used)."""

    def problem(key: Where, message: str) -> None:
        problems.append(ConfigProblem(file, format_path((*where, *key)), message))

    origins: list[str] = []
    patterns: list[re.Pattern[str]] = []
    any_origin = False
    for i, text in enumerate(config.allow_origins):
        key: Where = ("allow_origins", i)
        if text == "*":
            any_origin = True
            if len(config.allow_origins) > 1:
                problem(key, "* allows every origin: it stands alone")
            elif config.allow_credentials:
                problem(
                    key,
                    "* cannot go with allow_credentials: true (browsers refuse a "
                    "credentialed answer that allows every origin): list the origins",
                )
        elif text.startswith(REGEX_PREFIX):
            source = text[len(REGEX_PREFIX) :]
            try:
                pattern = re.compile(source)
            except re.error as exc:
                problem(key, f"not a valid regular expression: {exc}")
                continue
            foreign = [o for o in _FOREIGN_ORIGINS if pattern.fullmatch(o)]
            if foreign and config.allow_credentials:
                problem(
                    key,
                    f"matches {foreign[0]}, which no one listed: with allow_credentials "
                    "this lets any site read answers made with its visitors' credentials",
                )
            patterns.append(pattern)
        else:
            try:
                origin = parse_origin(text)
            except ValueError as exc:
                problem(key, str(exc))
                continue
            if origin in origins:
                problem(key, f"{origin} is listed twice")
            origins.append(origin)

    methods = tuple(
        dict.fromkeys(
            config.allow_methods
            if config.allow_methods is not None
            else (method, *(("HEAD",) if method == "GET" else ()))
        )
    )
    headers = _names(config.allow_headers, ("allow_headers",), problem)
    expose = _names(config.expose_headers, ("expose_headers",), problem)
    if expose == ("*",) and config.allow_credentials:
        problem(
            ("expose_headers", 0),
            'with allow_credentials, browsers read "*" as a header named *: list the names',
        )
    max_age_s: int | None = None
    if config.max_age is not None:
        max_age_s = int(config.max_age)
        if max_age_s < 1:
            problem(("max_age",), "sent in whole seconds: at least 1s")
    return CorsPolicy(
        origins=frozenset(origins),
        patterns=tuple(patterns),
        any_origin=any_origin,
        methods=methods,
        headers=None if headers == ("*",) else tuple(n.lower() for n in headers),
        expose_headers=expose,
        credentials=config.allow_credentials,
        max_age_s=max_age_s,
    )


def _names(names: list[str], key: Where, problem: Callable[[Where, str], None]) -> tuple[str, ...]:
    """Header names as written, each a token once (``*`` only alone)."""
    seen: dict[str, str] = {}
    for i, name in enumerate(names):
        if name == "*":
            if len(names) > 1:
                problem((*key, i), "* stands for every name: it stands alone")
        elif not TOKEN.fullmatch(name):
            problem((*key, i), "not a valid field name")
        elif name.lower() in seen:
            problem(
                (*key, i), f"the same name as {seen[name.lower()]} (names are case-insensitive)"
            )
        seen.setdefault(name.lower(), name)
    return tuple(seen.values())
