"""Compiling the ``auth:`` section into policy plans, and an endpoint's ``auth`` into the
policies it requires (at load; reads the API keys and JWKS files named by the config).

Every problem is collected with its file and path: a policy with no kind or two, an
algorithm that cannot go with the key source (RFC 8725 section 3.1: the verifier fixes the
algorithms; ``none`` never), an HMAC secret shorter than its hash (RFC 7518 section 3.2),
an unknown upstream, a bad line of a keys file (with its line number), an unknown policy
name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .._auth.plan import (
    ApiKeyPolicy,
    AuthPolicy,
    EndpointAuth,
    ForwardPolicy,
    JwtPolicy,
    Requirement,
    TokenSource,
)
from .._errors import ConfigProblem
from .._rules.headers import NEVER_FORWARDED_STR
from .._rules.template import parse_url_template
from .._rules.transform import split_path
from .._rules.urls import TemplateError
from .auth_model import ApiKeyConfig, AuthPolicyConfig, ForwardAuthConfig, JwtConfig
from .load import format_path
from .plan import TOKEN, UpstreamPlan

HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}  # name: least secret bytes
KEY_SET_ALGORITHMS = frozenset(
    {
        *(f"{family}{bits}" for family in ("RS", "PS", "ES") for bits in (256, 384, 512)),
        "ES256K",
        "EdDSA",
    }
)
_DIGEST_LINE = re.compile(r"^([A-Za-z0-9_.@:-]{1,128})\s+([0-9a-fA-F]{64})$")

Where = tuple[int | str, ...]


def compile_policies(
    policies: Mapping[str, AuthPolicyConfig],
    upstreams: Mapping[str, UpstreamPlan],
    known_upstreams: frozenset[str],
    file: str,
    problems: list[ConfigProblem],
) -> dict[str, AuthPolicy]:
    """The plans of every policy that compiles; the others add their problems."""
    plans: dict[str, AuthPolicy] = {}
    for name, config in policies.items():
        where: Where = ("auth", name)
        before = len(problems)
        kinds = [k for k in ("jwt", "api_key", "forward") if getattr(config, k) is not None]
        if len(kinds) != 1:
            problems.append(
                ConfigProblem(
                    file,
                    format_path(where),
                    "give exactly one of jwt, api_key and forward"
                    + (f" (found {', '.join(kinds)})" if kinds else ""),
                )
            )
            continue
        plan: AuthPolicy | None = None
        if config.jwt is not None:
            plan = _jwt(name, config, config.jwt, (*where, "jwt"), file, problems)
        elif config.api_key is not None:
            plan = _api_key(name, config.api_key, (*where, "api_key"), file, problems)
        elif config.forward is not None:
            plan = _forward(
                name,
                config.forward,
                upstreams,
                known_upstreams,
                (*where, "forward"),
                file,
                problems,
            )
        if config.require is not None and config.jwt is None:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "require")),
                    "roles and scopes are read from a JWT's claims: only with jwt",
                )
            )
        if plan is not None and len(problems) == before:
            plans[name] = plan
    return plans


def _jwt(
    name: str,
    policy: AuthPolicyConfig,
    config: JwtConfig,
    where: Where,
    file: str,
    problems: list[ConfigProblem],
) -> JwtPolicy | None:
    def problem(key: str | Where, message: str) -> None:
        at = (*where, key) if isinstance(key, str) else (*where, *key)
        problems.append(ConfigProblem(file, format_path(at), message))

    before = len(problems)
    sources = [s for s in (config.jwks_url, config.jwks_file, config.secret) if s is not None]
    if len(sources) != 1:
        problem((), "give exactly one of jwks_url, jwks_file and secret")
        return None
    jwks: bytes | None = None
    if config.jwks_url is not None and not re.match(r"^https?://[^/\s]+", config.jwks_url):
        problem("jwks_url", "must be an http:// or https:// URL")
    if config.jwks_file is not None:
        try:
            with open(config.jwks_file, "rb") as handle:
                jwks = handle.read()
        except OSError as exc:
            problem("jwks_file", f"cannot read {config.jwks_file}: {exc.strerror or exc}")
    secret = config.secret.encode("utf-8") if config.secret is not None else None
    for ai, algorithm in enumerate(config.algorithms):
        if algorithm.lower() == "none":
            problem(("algorithms", ai), "`none` means an unsigned token: never accepted")
        elif algorithm in HMAC_ALGORITHMS:
            if secret is None:
                problem(
                    ("algorithms", ai),
                    f"{algorithm} needs a secret: a key set's public keys are never HMAC secrets",
                )
            elif len(secret) < HMAC_ALGORITHMS[algorithm]:
                problem(
                    "secret",
                    f"{algorithm} needs a secret of at least {HMAC_ALGORITHMS[algorithm]} bytes "
                    "(RFC 7518 section 3.2)",
                )
        elif algorithm in KEY_SET_ALGORITHMS:
            if secret is not None:
                problem(("algorithms", ai), f"{algorithm} needs jwks_url or jwks_file, not secret")
        else:
            known = ", ".join([*HMAC_ALGORITHMS, *sorted(KEY_SET_ALGORITHMS)])
            problem(("algorithms", ai), f"unknown algorithm {algorithm!r} (known: {known})")
    token_sources: list[TokenSource] = []
    for ti, text in enumerate(config.token_from):
        place, _, field = text.partition(".")
        if place not in ("header", "cookie", "query") or not field:
            problem(("token_from", ti), "must be header.NAME, cookie.NAME or query.NAME")
        elif place == "header" and not TOKEN.fullmatch(field):
            problem(("token_from", ti), "invalid header name")
        elif place == "header":
            low = field.lower()
            token_sources.append(TokenSource("header", low, bearer=low == "authorization"))
        else:
            token_sources.append(TokenSource(place, field))  # type: ignore[arg-type]
    requirement: Requirement | None = None
    if policy.require is not None:
        require = policy.require
        try:
            roles_claim = split_path(require.roles_claim)
        except ValueError as exc:
            problems.append(
                ConfigProblem(file, format_path(("auth", name, "require", "roles_claim")), str(exc))
            )
            roles_claim = ()
        if not require.roles and not require.scopes:
            problems.append(
                ConfigProblem(
                    file, format_path(("auth", name, "require")), "name roles, scopes or both"
                )
            )
        requirement = Requirement(
            tuple(require.roles),
            tuple(str(s) for s in roles_claim),
            tuple(require.scopes),
            require.match == "all",
        )
    if len(problems) > before:
        return None
    return JwtPolicy(
        name=name,
        sources=tuple(token_sources),
        algorithms=tuple(config.algorithms),
        issuer=config.issuer,
        audience=tuple(config.audience or ()),
        leeway_s=config.leeway,
        refresh_s=config.refresh,
        secret=secret,
        jwks_url=config.jwks_url,
        jwks_file=config.jwks_file,
        jwks=jwks,
        require=requirement,
    )


def _api_key(
    name: str, config: ApiKeyConfig, where: Where, file: str, problems: list[ConfigProblem]
) -> ApiKeyPolicy | None:
    if not TOKEN.fullmatch(config.header):
        problems.append(ConfigProblem(file, format_path((*where, "header")), "invalid header name"))
        return None
    digests = read_keys_file(config.keys_file, file, (*where, "keys_file"), problems)
    if digests is None:
        return None
    return ApiKeyPolicy(name, config.header.lower().encode("latin-1"), digests, config.header)


def read_keys_file(
    path: str, file: str, where: Where, problems: list[ConfigProblem]
) -> tuple[tuple[str, bytes], ...] | None:
    """``NAME SHA256-HEX`` lines; blank lines and ``#`` comments are skipped. Each bad line
    is a problem of the keys file with its line number; None when there were any."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.append(ConfigProblem(file, format_path(where), f"cannot read {path}: {message}"))
        return None
    before = len(problems)
    digests: list[tuple[str, bytes]] = []
    names: set[str] = set()
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = _DIGEST_LINE.fullmatch(text)
        if match is None:
            problems.append(
                ConfigProblem(
                    path,
                    f"line {number}",
                    "expected `NAME SHA256-HEX` (the key's SHA-256 digest in 64 hex digits, "
                    "never the key itself)",
                )
            )
            continue
        key_name, digest = match.group(1), match.group(2).lower()
        if key_name in names:
            problems.append(ConfigProblem(path, f"line {number}", f"duplicate name {key_name!r}"))
            continue
        names.add(key_name)
        digests.append((key_name, digest.encode("ascii")))
    if len(problems) > before:
        return None
    return tuple(digests)


def _forward(
    name: str,
    config: ForwardAuthConfig,
    upstreams: Mapping[str, UpstreamPlan],
    known_upstreams: frozenset[str],
    where: Where,
    file: str,
    problems: list[ConfigProblem],
) -> ForwardPolicy | None:
    before = len(problems)
    upstream = upstreams.get(config.upstream)
    if upstream is None and config.upstream not in known_upstreams:
        known = ", ".join(sorted(known_upstreams)) or "none defined"
        problems.append(
            ConfigProblem(
                file,
                format_path((*where, "upstream")),
                f"unknown upstream {config.upstream!r} (known: {known})",
            )
        )
    try:
        if parse_url_template(config.path).refs:
            problems.append(
                ConfigProblem(file, format_path((*where, "path")), "a fixed path: no {references}")
            )
    except TemplateError as exc:
        problems.append(ConfigProblem(file, format_path((*where, "path")), str(exc)))
    copy_request: set[bytes] = set()
    for hi, header in enumerate(config.copy_request_headers):
        if not TOKEN.fullmatch(header):
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "copy_request_headers", hi)),
                    "invalid header name",
                )
            )
        elif header.lower() in NEVER_FORWARDED_STR:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "copy_request_headers", hi)),
                    f"{header} is hop-by-hop or set by the gateway",
                )
            )
        else:
            copy_request.add(header.lower().encode("latin-1"))
    copy_response: list[bytes] = []
    for hi, header in enumerate(config.copy_response_headers):
        if not TOKEN.fullmatch(header) or header.lower() in NEVER_FORWARDED_STR:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "copy_response_headers", hi)),
                    "invalid header name, or one the gateway sets",
                )
            )
        else:
            copy_response.append(header.lower().encode("latin-1"))
    if len(problems) > before or upstream is None:
        return None
    return ForwardPolicy(
        name=name,
        upstream=upstream.name,
        base=upstream.base,
        target=upstream.base.base_path + config.path,
        copy_request=frozenset(copy_request),
        copy_response=tuple(copy_response),
        timeout_s=config.timeout if config.timeout is not None else upstream.timeout_s,
    )


def endpoint_auth(
    names: list[str],
    policies: Mapping[str, AuthPolicy],
    known: Callable[[str], bool],
    at: str,
    file: str,
    problems: list[ConfigProblem],
) -> EndpointAuth | None:
    """The plans of the named policies; an unknown name (``known`` says no) is a problem at
    ``at`` (a policy that exists but failed to compile was reported already)."""
    if not names:
        return None
    found: list[AuthPolicy] = []
    for policy_name in names:
        if policy_name in policies:
            found.append(policies[policy_name])
        elif not known(policy_name):
            defined = ", ".join(sorted(policies)) or "none defined"
            problems.append(
                ConfigProblem(file, at, f"unknown auth policy {policy_name!r} (known: {defined})")
            )
    if len(found) != len(names):
        return None
    if len(set(names)) != len(names):
        problems.append(ConfigProblem(file, at, "a policy is named twice"))
        return None
    return EndpointAuth(tuple(found))
