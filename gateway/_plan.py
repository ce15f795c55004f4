"""Compiling a validated config into immutable plans (compile once, run many).

Everything about a backend call that does not depend on the request is decided here:
the upstream's origin and base path, the parsed URL template, static headers, timeouts,
transforms and the merge placement. Cross-references (unknown upstream, unknown path
parameter, duplicate names) are checked here, every problem collected before raising.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._aggregate import Placement
from ._config_load import format_path, load_config_text, read_config_file
from ._config_model import BackendConfig, GatewayConfig, backend_has_default
from ._errors import ConfigError, ConfigProblem
from ._transform import Transform
from ._urls import (
    BaseUrl,
    RoutePattern,
    Router,
    TemplateError,
    UrlTemplate,
    parse_base_url,
    parse_route,
    parse_url_template,
)

ADMIN_PREFIX = "/__gateway"

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 section 5.6.2
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 section 5.5: no CR, LF, NUL
# RFC 9110 section 7.6.1 hop-by-hop fields, and fields the gateway frames itself.
NEVER_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)


@dataclass(frozen=True)
class UpstreamPlan:
    name: str
    base: BaseUrl
    timeout_s: float
    max_connections: int
    idle_timeout_s: float
    max_response_bytes: int
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class BackendPlan:
    name: str
    upstream: UpstreamPlan
    method: str
    url: UrlTemplate
    timeout_s: float
    max_response_bytes: int
    headers: tuple[tuple[str, str], ...]
    transform: Transform
    placement: Placement
    required: bool


@dataclass(frozen=True)
class EndpointPlan:
    index: int
    path: str
    method: str
    route: RoutePattern
    deadline_s: float
    forward_headers: tuple[str, ...]  # lower-case
    forward_query: frozenset[str]
    passthrough: bool
    backends: tuple[BackendPlan, ...]
    placements: tuple[Placement, ...]


@dataclass(frozen=True)
class GatewayPlan:
    """A loaded config, ready to serve. Immutable; shared by every request."""

    file: str
    config: GatewayConfig
    upstreams: Mapping[str, UpstreamPlan]
    endpoints: tuple[EndpointPlan, ...]
    router: Router[EndpointPlan] = field(repr=False)


def _check_headers(
    headers: Mapping[str, str],
    file: str,
    where: tuple[int | str, ...],
    problems: list[ConfigProblem],
) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in headers.items():
        if not _TOKEN.match(name):
            problems.append(ConfigProblem(file, format_path((*where, name)), "invalid header name"))
        elif name.lower() in NEVER_FORWARDED:
            problems.append(
                ConfigProblem(
                    file, format_path((*where, name)), "this header is set by the gateway"
                )
            )
        elif _BAD_VALUE.search(value):
            problems.append(
                ConfigProblem(
                    file, format_path((*where, name)), "header value has a control character"
                )
            )
        else:
            out.append((name, value))
    return tuple(out)


def compile_config(config: GatewayConfig, file: str = "<config>") -> GatewayPlan:
    """Check cross-references and build the plans.

    Raises:
        ConfigError: with every problem found.
    """
    problems: list[ConfigProblem] = []
    defaults = config.defaults

    upstreams: dict[str, UpstreamPlan] = {}
    for name, up in config.upstreams.items():
        where: tuple[int | str, ...] = ("upstreams", name)
        try:
            base = parse_base_url(up.url)
        except TemplateError as exc:
            problems.append(ConfigProblem(file, format_path((*where, "url")), str(exc)))
            continue
        upstreams[name] = UpstreamPlan(
            name=name,
            base=base,
            timeout_s=up.timeout if up.timeout is not None else defaults.timeout,
            max_connections=up.max_connections or defaults.max_connections,
            idle_timeout_s=up.idle_timeout,
            max_response_bytes=up.max_response_size or defaults.max_response_size,
            headers=_check_headers(up.headers, file, (*where, "headers"), problems),
        )

    endpoints: list[EndpointPlan] = []
    seen_routes: dict[tuple[tuple[str | None, ...], str], int] = {}
    for ei, ep in enumerate(config.endpoints):
        where = ("endpoints", ei)
        try:
            route = parse_route(ep.path)
        except TemplateError as exc:
            problems.append(ConfigProblem(file, format_path((*where, "path")), str(exc)))
            continue
        if ep.path == ADMIN_PREFIX or ep.path.startswith(ADMIN_PREFIX + "/"):
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "path")),
                    f"{ADMIN_PREFIX}/ is reserved for the gateway",
                )
            )
        shape = (
            tuple(None if p else s for s, p in zip(route.segments, route.params, strict=True)),
            ep.method,
        )
        if shape in seen_routes:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "path")),
                    f"{ep.method} {ep.path} is already defined by endpoints[{seen_routes[shape]}]",
                )
            )
        seen_routes.setdefault(shape, ei)

        forward_headers = []
        for hi, header in enumerate(ep.forward_headers):
            if not _TOKEN.match(header):
                problems.append(
                    ConfigProblem(
                        file, format_path((*where, "forward_headers", hi)), "invalid header name"
                    )
                )
            elif header.lower() in NEVER_FORWARDED:
                problems.append(
                    ConfigProblem(
                        file,
                        format_path((*where, "forward_headers", hi)),
                        f"{header} is hop-by-hop or framed by the gateway and cannot be forwarded",
                    )
                )
            else:
                forward_headers.append(header.lower())
        for qi, name in enumerate(ep.forward_query):
            if not name:
                problems.append(
                    ConfigProblem(
                        file, format_path((*where, "forward_query", qi)), "empty parameter name"
                    )
                )

        if ep.passthrough and len(ep.backends) != 1:
            problems.append(
                ConfigProblem(
                    file,
                    format_path((*where, "backends")),
                    f"a passthrough endpoint has exactly one backend (found {len(ep.backends)})",
                )
            )

        backends: list[BackendPlan] = []
        names: set[str] = set()
        for bi, be in enumerate(ep.backends):
            plan = _compile_backend(
                be,
                (*where, "backends", bi),
                route,
                upstreams,
                config,
                file,
                problems,
                ep.passthrough,
            )
            if be.name in names:
                problems.append(
                    ConfigProblem(
                        file,
                        format_path((*where, "backends", bi, "name")),
                        f"duplicate backend name {be.name!r}",
                    )
                )
            names.add(be.name)
            if plan is not None:
                backends.append(plan)

        if len(backends) == len(ep.backends):
            endpoints.append(
                EndpointPlan(
                    index=ei,
                    path=ep.path,
                    method=ep.method,
                    route=route,
                    deadline_s=ep.deadline if ep.deadline is not None else defaults.deadline,
                    forward_headers=tuple(forward_headers),
                    forward_query=frozenset(ep.forward_query),
                    passthrough=ep.passthrough,
                    backends=tuple(backends),
                    placements=tuple(b.placement for b in backends),
                )
            )

    if problems:
        raise ConfigError(problems)
    router = Router((e.route, e.method, e) for e in endpoints)
    return GatewayPlan(file, config, upstreams, tuple(endpoints), router)


def _compile_backend(
    be: BackendConfig,
    where: tuple[int | str, ...],
    route: RoutePattern,
    upstreams: Mapping[str, UpstreamPlan],
    config: GatewayConfig,
    file: str,
    problems: list[ConfigProblem],
    passthrough: bool,
) -> BackendPlan | None:
    before = len(problems)

    def problem(key: str, message: str) -> None:
        problems.append(ConfigProblem(file, format_path((*where, key)), message))

    upstream = upstreams.get(be.upstream)
    # an upstream that exists but failed to compile was reported already
    if upstream is None and be.upstream not in config.upstreams:
        known = ", ".join(sorted(config.upstreams)) or "none defined"
        problem("upstream", f"unknown upstream {be.upstream!r} (known: {known})")
    try:
        url = parse_url_template(be.path)
    except TemplateError as exc:
        problem("path", str(exc))
        url = None
    if url is not None:
        for name in url.param_names:
            if name not in route.param_names:
                known = ", ".join(route.param_names) or "none"
                problem(
                    "path",
                    f"unknown path parameter {{{name}}} (the endpoint path has: {known})",
                )
    transform = Transform()
    # compile each field alone first, so an error names the key it is about
    for key, args in (
        ("select", {"select": be.select}),
        ("allow", {"allow": be.allow}),
        ("deny", {"deny": be.deny}),
        ("rename", {"rename": be.rename}),
    ):
        try:
            Transform.compile(**args)
        except ValueError as exc:
            problem(key, str(exc))
    try:
        transform = Transform.compile(be.select, be.allow, be.deny, be.rename)
    except ValueError as exc:
        if len(problems) == before:
            problem("allow", str(exc))
    if be.group is not None and not be.group:
        problem("group", "must not be empty")
    if passthrough:
        for key in ("select", "allow", "deny", "rename", "group", "default"):
            if key in be.model_fields_set:
                problem(key, "not used by a passthrough endpoint (the body is streamed unchanged)")
    headers = _check_headers(be.headers, file, (*where, "headers"), problems)
    if len(problems) > before or upstream is None or url is None:
        return None
    has_default = backend_has_default(be)
    return BackendPlan(
        name=be.name,
        upstream=upstream,
        method=be.method,
        url=url,
        timeout_s=be.timeout if be.timeout is not None else upstream.timeout_s,
        max_response_bytes=upstream.max_response_bytes,
        headers=upstream.headers + headers,
        transform=transform,
        placement=Placement(be.name, be.required, be.group, has_default, be.default),
        required=be.required,
    )


def load_config(
    path: str, env: Mapping[str, str] | None = None, *, text: str | None = None
) -> GatewayPlan:
    """Read, validate and compile a config file.

    Raises:
        ConfigError: every problem found, each naming the file and the path inside it.
    """
    if text is None:
        text = read_config_file(path)
    return compile_config(load_config_text(text, path, env), path)
