"""The config file's schema (version 1): frozen, strict pydantic models.

Every field's docstring is its documentation: it feeds the JSON Schema
(``gateway schema``) and ``docs/config.md``. Unknown keys are errors. Durations are strings
with a unit (``250ms``, ``2s``, ``1.5s``, ``1m``) and become floats in seconds; sizes are
byte counts or strings with a unit (``512KiB``, ``16MiB``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, JsonValue, WithJsonSchema

from .._rules.admin import DEFAULT_ADMIN_ALLOW
from .._rules.balance import OutlierSettings
from .._rules.encoding import CODINGS, DEFAULT_MIN_SIZE_BYTES, DEFAULT_TYPES
from .._rules.resilience import BreakerSettings
from .._rules.websocket import DEFAULT_IDLE_TIMEOUT_S as DEFAULT_WS_IDLE_TIMEOUT_S
from .._rules.websocket import DEFAULT_MAX_CONNECTIONS as DEFAULT_WS_MAX_CONNECTIONS
from .._rules.websocket import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_WS_MAX_MESSAGE_BYTES
from .._state.store import DEFAULT_MEMORY_MAX_BYTES, DEFAULT_NAMESPACE
from .._state.store import DEFAULT_TIMEOUT_S as DEFAULT_STATE_TIMEOUT_S
from .._upstream.transport import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS
from .auth_model import AuthPolicyConfig, AuthRef
from .types import METHODS as METHODS
from .types import Duration, Method, Name, Size, SizeOrZero, _duration, _Model, yaml_kind

DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_DEADLINE_S = 5.0
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_TOTAL_RESPONSE_BYTES = 64 * 1024 * 1024
DEFAULT_BACKLOG = 1024
DEFAULT_GRACEFUL_TIMEOUT_S = 3.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_SEND_TIMEOUT_S = 30.0
DEFAULT_MAX_URL_BYTES = 8192
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
# The state machines' own defaults are the config's: one definition each.
_BREAKER = BreakerSettings()
_OUTLIER = OutlierSettings()


class ServerTLSConfig(_Model):
    """TLS to clients, served by hypercorn: HTTP/2 and HTTP/1.1 offered through ALPN.
    The files are read at startup and again on every reload (SIGHUP), so a renewed
    certificate is served without a restart."""

    cert_file: str
    """PEM file of the server certificate, followed by its chain."""

    key_file: str
    """PEM file of the certificate's private key (unencrypted)."""

    client_ca_file: str | None = None
    """PEM file of the CAs whose client certificates are accepted. Without
    `require_client_cert`, a client certificate is asked for but optional."""

    require_client_cert: bool = False
    """Refuse clients without a certificate signed by `client_ca_file` (mutual TLS)."""

    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    """Oldest TLS version accepted. HTTP/2 requires TLS 1.2 or later (RFC 9113 section
    9.2)."""


class ServerConfig(_Model):
    """How the gateway listens. Used by `gateway serve`; plain hypercorn uses its own flags."""

    bind: str = DEFAULT_BIND
    """Address to listen on, `HOST:PORT`. The CLI's `--bind` overrides it."""

    workers: int = Field(default=1, ge=1, le=256)
    """Worker processes (each with its own connection pools). The CLI's `--workers`
    overrides it. One worker per core is a good start."""

    backlog: int = Field(default=DEFAULT_BACKLOG, ge=1, le=65535)
    """Listen backlog. Hypercorn's default of 100 drops connections in a burst."""

    graceful_timeout: Duration = DEFAULT_GRACEFUL_TIMEOUT_S
    """On shutdown, how long in-flight requests may run before they are cancelled."""

    drain_delay: Duration | None = None
    """On SIGTERM/SIGINT, `/__gateway/ready` answers 503 at once but the listener keeps
    accepting for this long (so load balancers notice), then closes; in-flight requests then
    get `graceful_timeout`. None: close at once. Applies to every worker of `gateway serve`."""

    max_request_body: Size = DEFAULT_MAX_REQUEST_BYTES
    """Largest client request body accepted (413 beyond). Passthrough bodies are streamed
    and counted as they arrive."""

    body_timeout: Duration = DEFAULT_BODY_TIMEOUT_S
    """Total time to receive a client's request body for aggregated endpoints (408
    beyond). Passthrough uploads are bounded by the backend's timeout between chunks."""

    send_timeout: Duration = DEFAULT_SEND_TIMEOUT_S
    """Longest a write to a client may wait for the client to read (its socket buffers
    full): a client that reads nothing for this long is disconnected, whatever it was
    receiving (a large body, an event stream, a WebSocket). During a drain, writes also
    end with `graceful_timeout`."""

    max_url_length: int = Field(default=DEFAULT_MAX_URL_BYTES, ge=256, le=65536)
    """Longest request target (path and query) accepted (414 beyond)."""

    max_header_size: Size = DEFAULT_MAX_HEADER_BYTES
    """Largest request head (request line and headers) accepted (431 beyond)."""

    tls: ServerTLSConfig | None = None
    """Serve https (HTTP/2 and HTTP/1.1) instead of plain http."""

    log_format: Literal["json", "text"] = "json"
    """Log lines as JSON objects, or as readable text. The CLI's `--log-format` overrides it."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged; `info` includes one access line per request. The CLI's
    `--log-level` overrides it."""

    admin_allow: list[str] = Field(default_factory=lambda: list(DEFAULT_ADMIN_ALLOW))
    """Addresses or CIDRs allowed to read the private admin routes (`/__gateway/config`,
    `/upstreams`, `/state`, `/metrics`); anyone else gets 403 `admin_forbidden`. Matched
    against the connection's peer address, never `X-Forwarded-For` (not even from
    `trusted_proxies`). `/__gateway/health` and `/__gateway/ready` answer everyone."""

    admin_bind: str | None = None
    """Serve the private admin routes on a listener of their own, `HOST:PORT` (e.g.
    `127.0.0.1:9901`); the public listener then answers 404 for them, and this one serves
    only `/__gateway/`. `admin_allow` still applies. Read at startup (a reload keeps the
    listener). None: the admin routes share `bind`."""

    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or CIDRs of proxies in front of the gateway whose `X-Forwarded-For`/
    `-Proto` are believed (walking from the right). From anyone else those headers are
    replaced."""


def _schema_source(value: object) -> object:
    """A schema is a file path or a JSON object. YAML can say more than JSON (dates,
    keys that are not strings): name where, rather than a union's error (`.inf` and `.nan`
    are refused by the loader, anywhere in the config)."""

    def walk(node: object, at: str) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if not isinstance(key, str):
                    raise ValueError(f"{at or 'the schema'}: the key {key!r} is not a string")
                walk(item, f"{at}.{key}" if at else key)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{at}[{index}]")
        elif node is not None and not isinstance(node, str | int | float | bool):
            raise ValueError(f"{at}: {yaml_kind(node)} is not a JSON value (quote it)")

    if isinstance(value, dict):
        walk(value, "")
    return value


SchemaSource = Annotated[str | dict[str, JsonValue] | None, BeforeValidator(_schema_source)]


class CorsConfig(_Model):
    """Let pages of other origins call the endpoint from a browser (the CORS protocol of
    the Fetch standard; see docs/browser.md). Preflights (`OPTIONS` with `Origin` and
    `Access-Control-Request-Method`) are answered by the gateway, before authentication
    and rate limits, without calling any upstream: 204 when allowed, 403
    `cors_preflight_refused` otherwise. Every answer of the endpoint to an allowed origin
    (errors included) carries `Access-Control-Allow-Origin`; a request from another origin
    is still served, without it, and the browser keeps the answer from the page."""

    allow_origins: list[str] = Field(min_length=1)
    """Origins allowed, each `scheme://host[:port]` as browsers send it (`http` or
    `https`, or an app's or extension's scheme such as `capacitor` or `chrome-extension`;
    no path, no trailing slash; written in any case and with or without the default port,
    each is compared in the form browsers send: scheme and host in lower case, no default
    port), `regex:PATTERN` (a Python regular expression the whole origin must match, like
    `regex:^https://[a-z0-9-]+\\.example$`), or `*` alone for any origin (not with
    `allow_credentials`). `null` is refused: sandboxed documents and `file:` pages send it,
    so any site can."""

    allow_methods: list[Method] | None = None
    """`Access-Control-Allow-Methods`: the methods a preflight may ask for (default: the
    endpoint's method, and HEAD with GET)."""

    allow_headers: list[str] = Field(default_factory=list)
    """Request header names a page may send (`Access-Control-Allow-Headers`), such as
    `Authorization` and `Content-Type` (a JSON body's `Content-Type` needs a preflight);
    `["*"]` allows whatever a preflight asks for, echoing the names (so it works with
    credentials too, where browsers take a `*` literally)."""

    expose_headers: list[str] = Field(default_factory=list)
    """Response header names a page may read besides the safelisted ones
    (`Access-Control-Expose-Headers`), such as `X-Request-Id`, `X-Gateway-Complete`,
    `X-Gateway-Backends`. `["*"]` exposes every one, but not with `allow_credentials`
    (browsers then read it as a header named `*`)."""

    allow_credentials: bool = False
    """Let pages send cookies and `Authorization` (`fetch(..., {credentials: "include"})`)
    and read the answer: `Access-Control-Allow-Credentials: true`, and the origin echoed,
    never `*`."""

    max_age: Duration | None = None
    """How long a browser may reuse a preflight's answer (`Access-Control-Max-Age`, in
    whole seconds). Browsers cap it: Chromium at 2h, Firefox at 24h. Without it, they ask
    again after 5s."""


class MergeConfig(_Model):
    """How the backends' results merge, in config order, beyond the rules in the README
    ("Merging"). The merge stays shallow: only values meeting under one key of the body (or
    of two objects sharing a `group`) are combined, never objects deeper down."""

    arrays: Literal["concat", "replace"] = "replace"
    """Two arrays under one key (two backends with one `group`, or one top-level key of two
    merged objects): `concat` joins them, the earlier backend's elements first, whatever
    order the answers arrive in; `replace` keeps the later backend's. An array meeting
    anything else is always replaced by the later value."""


class ShapeConfig(_Model):
    """Transforms of the endpoint's merged body, after the merge and every `into`, in the
    order `select`, `allow` or `deny`, `rename`; compiled at load. Paths are dot paths
    whose segments may end in `[N]` or `[*]`, as in references (`orders[*].id`). The
    `_gateway` block of `debug` and error bodies are not shaped."""

    select: str | None = None
    """The part of the merged body to answer with (`orders`, `orders[0]`). A `[*]`
    projects: `orders[*].id` answers the list of the orders' ids, leaving out the elements
    without one. Nothing there: 502 `shape_select_missing`."""

    allow: list[str] | None = None
    """Paths to keep (nesting kept; applied to each element of an array, with or without
    `[*]`: `orders[*].id` is `orders.id`)."""

    deny: list[str] | None = None
    """Paths to remove (applied to each element of an array). Not with `allow`."""

    rename: dict[str, str] = Field(default_factory=dict)
    """`{path: new_key}`: renames a key in place (in each element of an array)."""


class CompressionConfig(_Model):
    """Compression of responses. The coding is chosen per request by `Accept-Encoding`
    (RFC 9110 section 12.5.3): the listed algorithm the client weighs highest, identity
    only when it accepts none of them, 406 `not_acceptable` when it accepts neither those
    nor identity. Never compressed: 1xx, 204, 304, 206, an answer that already has a
    `Content-Encoding` (a passthrough upstream's), `Cache-Control: no-transform`, and a
    `Content-Digest` or `Repr-Digest`. Every answer of the endpoint carries
    `Vary: Accept-Encoding`; a strong `ETag` of a compressed answer becomes weak."""

    algorithms: list[str] = Field(default_factory=lambda: list(CODINGS))
    """Content codings to compress with (`br`, `zstd`, `gzip`), in order of preference:
    among those a client weighs equally, the first listed wins."""

    min_size: SizeOrZero = DEFAULT_MIN_SIZE_BYTES
    """Smaller bodies go uncompressed, unless the client refuses identity
    (`identity;q=0`, or `*;q=0` without `identity`); `0` compresses every body. A stream without `Content-Length`
    (passthrough) is compressed whatever its size: its chunks are never held back."""

    types: list[str] = Field(default_factory=lambda: list(DEFAULT_TYPES))
    """Media types compressed: `type/subtype`, `type/*` or `*/*`, compared without
    parameters and case-insensitively. Other types go uncompressed unless the client
    refuses identity."""

    levels: dict[str, int] = Field(default_factory=dict)
    """Level of an algorithm, such as `{br: 5}`: brotli 0 to 11 (default 3), zstd 1 to 19
    (default 3), gzip 1 to 9 (default 5). Higher levels save a few percent of the bytes
    for several times the CPU (brotli's own default, 11, takes about 200 times as long
    as 3 on a 20 KiB JSON body for 17% instead of 20% of its size); above a size measured
    per level a body is compressed in a worker thread, so a high level costs CPU, not the
    event loop."""


class WebSocketConfig(_Model):
    """WebSocket upgrades through a passthrough endpoint (RFC 6455): the gateway accepts
    the client's upgrade after authentication, rate limits and the origin check, opens a
    WebSocket to the backend's upstream (`http://` becomes `ws://`, `https://` `wss://`)
    and relays messages both ways. See the README's "WebSockets"."""

    max_message_size: Size = DEFAULT_WS_MAX_MESSAGE_BYTES
    """Largest message relayed, either way, in bytes (its whole payload, all frames; text
    as UTF-8): a bigger one closes both sides with 1009 (message too big). Each message is
    held whole in memory while it crosses."""

    idle_timeout: Duration = DEFAULT_WS_IDLE_TIMEOUT_S
    """A connection with no message and no ping either way for this long is closed, both
    sides with 1001 (going away). Clients that ping to keep alive (every 20-30 s, say)
    stay open while they do: a ping counts as activity and is relayed."""

    max_connections: int = Field(default=DEFAULT_WS_MAX_CONNECTIONS, ge=1)
    """Open WebSockets of this endpoint, per worker process; an upgrade beyond it is
    answered 503 `too_many_websockets` with `Retry-After`, before any upstream call."""

    allow_origins: list[str] | None = Field(default=None, min_length=1)
    """Origins whose pages may open the WebSocket, as in `cors.allow_origins`
    (`scheme://host[:port]`, `regex:PATTERN` or `*`). An upgrade carrying another
    `Origin` is refused 403 `websocket_origin_refused`; one without `Origin` (not a
    browser) is let through. Browsers apply no CORS to WebSockets, so with cookie
    authentication this list is what keeps other sites' pages out. Unset: any origin."""


class DefaultsConfig(_Model):
    """Values used where an upstream, endpoint or backend does not set its own."""

    timeout: Duration = DEFAULT_TIMEOUT_S
    """One backend call, from connect to the last body byte."""

    deadline: Duration = DEFAULT_DEADLINE_S
    """One endpoint request, all backends together."""

    max_connections: int = Field(default=DEFAULT_MAX_CONNECTIONS, ge=1)
    """Open connections to one upstream, per worker."""

    max_response_size: Size = DEFAULT_MAX_RESPONSE_BYTES
    """Largest upstream response body read for one backend call (outcome `too_large`
    beyond). Not applied to passthrough."""

    max_total_response_size: Size = DEFAULT_MAX_TOTAL_RESPONSE_BYTES
    """Upstream response bytes one aggregated request may read, all backends together
    (counted after decompression); a backend whose body crosses it gets `too_large`."""

    auth: AuthRef = None
    """The `auth` of every endpoint that does not set its own (`auth: null` on an endpoint
    opts out)."""

    response_headers: dict[str, str] = Field(default_factory=dict)
    """Fields added to every answer of every endpoint (aggregated, passthrough, and the
    errors of a routed request; a 404 or 405 has no endpoint), replacing an upstream's
    field of the same name: static values such as
    `Strict-Transport-Security`, `Content-Security-Policy`, `X-Content-Type-Options`.
    An endpoint's own `response_headers` add to these (its value wins for one name).
    Fields the gateway sets for each response (framing, `Content-Type`,
    `Content-Encoding`, `Date`, `X-Request-Id`, `X-Gateway-*`) cannot be set or removed;
    `Retry-After` and `WWW-Authenticate` cannot be removed."""

    remove_headers: list[str] = Field(default_factory=list)
    """Fields removed from every response of every endpoint (such as an upstream's
    `Server` or `X-Powered-By` on passthrough); an endpoint's own list adds to this. A
    field named in `defaults.response_headers` too is a config problem."""

    cors: CorsConfig | None = None
    """Cross-origin calls from browsers, for every endpoint that does not set its own
    `cors` (see `defaults.cors`)."""

    compression: CompressionConfig | bool = Field(default_factory=CompressionConfig)
    """Compress the answers of every endpoint that does not set its own (see below); on by
    default. `false` turns it off; `true` is the built-in settings below."""

    merge: MergeConfig | None = None
    """How the results of every endpoint that does not set its own `merge` are merged."""


def _percent(value: object) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"invalid percentage {value!r}") from None
        if not 0 <= number <= 100:
            raise ValueError("a percentage must be between 0% and 100%")
        return number / 100
    raise ValueError("write a percentage like 20%")


Percent = Annotated[
    float,
    BeforeValidator(_percent),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?%$"}),
]

RETRYABLE = ("unreachable", "http_500", "http_502", "http_503", "http_504")


class RetryConfig(_Model):
    """Retry failed calls, within the deadline and the upstream's retry budget."""

    attempts: int = Field(default=2, ge=1, le=10)
    """Retries after the first try (so `2` means up to 3 calls)."""

    backoff: Duration = 0.05
    """Base wait before a retry; doubled each time, with +-50% jitter."""

    on: list[Literal[RETRYABLE]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["unreachable", "http_502", "http_503"]
    )
    """Outcomes that are retried."""

    budget: Percent = 0.2
    """Retries in flight to this upstream at most this share of its requests in flight
    (never fewer than 3), so retries cannot multiply an outage."""

    unsafe: bool = False
    """Also retry methods that are not idempotent (POST, PATCH)."""


class CircuitBreakerConfig(_Model):
    """Stop calling an upstream that keeps failing; either trigger opens the breaker."""

    consecutive_failures: int = Field(default=_BREAKER.consecutive_failures, ge=1)
    """Failures in a row that open it."""

    failure_ratio: Percent = _BREAKER.failure_ratio
    """Share of failed calls in `window` that opens it (after `min_requests` calls)."""

    window: Duration = _BREAKER.window_s
    """Sliding window for `failure_ratio`."""

    min_requests: int = Field(default=_BREAKER.min_requests, ge=1)
    """Calls in the window before `failure_ratio` counts."""

    open_for: Duration = _BREAKER.open_for_s
    """How long it stays open (calls fail at once with `circuit_open`) before probing."""

    half_open_requests: int = Field(default=_BREAKER.half_open_requests, ge=1)
    """Probes let through after `open_for`; all must succeed to close it again."""


def _hedge_after(value: object) -> float | str:
    if isinstance(value, str) and re.fullmatch(r"p(50|75|90|95|99)", value.strip()):
        return value.strip()
    return _duration(value)


HedgeAfter = Annotated[
    float | str,
    BeforeValidator(_hedge_after),
    WithJsonSchema({"type": "string", "pattern": r"^(p(50|75|90|95|99)|\d+(\.\d+)?(ms|s))$"}),
]


class HedgeConfig(_Model):
    """Delayed hedging: if a call has not answered after `after`, send another; the first
    success wins and the others are cancelled (their connections closed)."""

    after: HedgeAfter
    """A duration, or a percentile of this upstream's recent latency (`p50`, `p75`, `p90`,
    `p95`, `p99`; no hedging until 20 calls have been seen)."""

    max: int = Field(default=1, ge=1, le=3)
    """Extra calls at most per attempt. Hedges count against the retry budget."""


class BulkheadConfig(_Model):
    """Bound the calls in flight to one upstream, so a slow one cannot take every
    connection and all the memory of a worker."""

    max_concurrent: int = Field(default=100, ge=1)
    """Calls in flight to this upstream at once (per worker)."""

    queue_timeout: Duration = 0.05
    """How long a call may wait for a slot; longer: outcome `overloaded`."""


class OutlierDetectionConfig(_Model):
    """Passive health of an upstream's hosts (with several `urls`): a host that keeps
    failing is ejected, for longer each time, and at least one host is always kept."""

    consecutive_failures: int = Field(default=_OUTLIER.consecutive_failures, ge=1)
    """Failed calls in a row (`unreachable`, `timeout`, `http_5xx`) that eject a host."""

    ejection: Duration = _OUTLIER.ejection_s
    """How long a host is ejected the first time; the n-th time in a row it is n times
    this. Each `ejection` it then stays in service takes one off that count."""

    max_ejection: Duration = _OUTLIER.max_ejection_s
    """The longest ejection."""

    max_ejected: Percent = _OUTLIER.max_ejected
    """Share of the hosts that may be ejected at once (at least one of two or more, never
    the last one in service)."""


class UpstreamConfig(_Model):
    """A service the gateway calls. Hosts come only from here, never from a client."""

    url: str | None = None
    """`scheme://host:port[/base-path]`, scheme `http` or `https`. Backend paths are
    appended to the base path. Exactly one of `url` and `urls`."""

    urls: list[str] | None = Field(default=None, min_length=1)
    """Several hosts serving the same API (same scheme and base path): calls are balanced
    over them (`balance`), and a failed call is retried on another host."""

    host_header: str | None = None
    """The `Host` field (and, for https, the TLS server name the certificate must match)
    sent to every host of this upstream, for replicas behind one virtual name:
    `host` or `host:port`. Default: each host's own authority from its URL (RFC 9110
    section 7.2), so calls balanced over `urls` name the host they go to. Upstreams sharing
    an https pool (origin and client certificate) must agree on it."""

    balance: Literal["round_robin", "least_outstanding"] = "round_robin"
    """With `urls`: `round_robin`, or `least_outstanding` (the host with the fewest calls in
    flight from this worker)."""

    outlier_detection: OutlierDetectionConfig = Field(default_factory=OutlierDetectionConfig)
    """With `urls`: when a failing host is taken out of the rotation."""

    timeout: Duration | None = None
    """Default timeout of calls to this upstream (overrides `defaults.timeout`)."""

    max_connections: int | None = Field(default=None, ge=1)
    """Open connections to this upstream per worker (default `defaults.max_connections`);
    calls beyond it wait for a free connection, within their timeout."""

    idle_timeout: Duration = DEFAULT_IDLE_TIMEOUT_S
    """How long an idle keep-alive connection is kept for reuse. Keep it below the
    upstream's own keep-alive timeout."""

    max_response_size: Size | None = None
    """Largest response body read from this upstream (overrides `defaults.max_response_size`)."""

    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent on every call to this upstream; values may use `${VAR}`. Names are
    case-insensitive (RFC 9110 section 5.1): two that differ only by case are a config
    error, and a backend's header of the same name replaces this one."""

    ca_file: str | None = None
    """For https: a PEM file of CA certificates to verify this upstream against, instead
    of the system's. Certificates are always verified."""

    client_cert: str | None = None
    """For https: a PEM file with the certificate (and chain) the gateway presents to this
    upstream (mutual TLS). Set together with `client_key`. Part of what picks the
    connection pool: upstreams on one origin share connections only if they name the
    same certificate and key files."""

    client_key: str | None = None
    """For https: the PEM file of `client_cert`'s private key (unencrypted)."""

    retries: RetryConfig | None = None
    """Retry failed calls to this upstream (idempotent methods only, unless `unsafe`)."""

    bulkhead: BulkheadConfig | None = None
    """Limit the calls in flight to this upstream (outcome `overloaded` beyond)."""

    hedge: HedgeConfig | None = None
    """Send a second call when the first is slow (idempotent methods only)."""

    circuit_breaker: CircuitBreakerConfig | None = None
    """Fail calls at once (outcome `circuit_open`) while this upstream keeps failing.
    Failures are `unreachable`, `timeout` and `http_5xx`; cancellation by the gateway is not."""


class RateLimitConfig(_Model):
    """One limit on an endpoint's requests (GCRA, exact under concurrency): `rate`
    requests per unit of time, with bursts of up to `burst` at once, counted per `key`."""

    rate: str
    """`N/s`, `N/min` or `N/h`, e.g. `100/s`."""

    burst: int | None = Field(default=None, ge=1)
    """Requests allowed at once before the rate applies (default: the `N` of `rate`)."""

    key: str = "ip"
    """What is counted: `ip` (the client address, under `server.trusted_proxies`),
    `global` (every request together), `header:NAME`, `path:NAME`, `query:NAME` or
    `jwt:CLAIM` (a claim of the verified token, by dot path: `jwt:sub`; the endpoint's
    `auth` needs a jwt policy). Requests without that header, query parameter or claim
    share one bucket."""

    name: str | None = None
    """The policy's name in the `RateLimit-Policy` and `RateLimit` response fields
    (default: `key`, with `:` as `-`)."""


class BackendCacheConfig(_Model):
    """Cache this GET backend's successful responses, shared by every request (and, with
    `state.redis`, every instance). Concurrent identical calls share one upstream request."""

    ttl: Duration | None = None
    """How long a response is fresh when the upstream's `Cache-Control` gives no
    `s-maxage`/`max-age`. Without it, only what `Cache-Control` allows is cached.
    `no-store`, `no-cache`, `private` and `Set-Cookie` always prevent storing. A call
    carrying the client's `Authorization` (forwarded or templated; not a token set in the
    config) is stored only when the upstream allows it with `s-maxage`, `public` or
    `must-revalidate` (RFC 9111 section 3.5); otherwise `X-Gateway-Backends` says
    `cache=not-stored-authorization`, and `gateway check` warns about such a backend."""

    coalesce: bool = True
    """Let concurrent identical calls share one upstream request. A reply that may not be
    shared between clients (`Set-Cookie`, `private`, `no-store`, `no-cache`) is never
    given to the waiting calls: each makes its own request."""


class EndpointCacheConfig(_Model):
    """Cache the endpoint's merged response, shared by every client (and, with
    `state.redis`, every instance). Only a complete 200 is stored, and never one whose
    returned headers make it unshareable (`Set-Cookie`; `Cache-Control` with `no-store`,
    `private` or `no-cache`; `Vary: *`). A request carrying `Authorization` or `Cookie` is
    neither answered from nor stored in the cache unless `key` names that header (RFC 9111
    section 3.5). Responses carry `X-Cache: hit`, `miss` or `bypass`."""

    ttl: Duration
    """How long a stored response is served."""

    key: list[str] | None = None
    """What tells responses apart besides the endpoint: `path.NAME`, `query.NAME` (every
    value) and `header.NAME` values. Default: every value the endpoint reads, which is every
    path parameter, the whole query string and every header a template
    (`{header.NAME}`), a `when:` or `forward_headers` reads. An explicit key that leaves out
    a value the endpoint reads is allowed (for a header that never changes the answer) but
    `gateway check` warns: clients differing only there share one answer."""


class ConditionConfig(_Model):
    """A test on the client request: a query parameter or header is present, equal to a
    value, or one of a list. Exactly one of `query` and `header`; at most one of `equals`
    and `in`."""

    query: str | None = None
    """Name of a client query parameter to test (its first value)."""

    header: str | None = None
    """Name of a client request header to test."""

    equals: str | None = None
    """The value must be exactly this. Without `equals` or `in`, presence is enough."""

    in_: list[str] | None = Field(default=None, alias="in")
    """The value must be one of these."""


def _item_errors(value: object) -> object:
    if value is None:
        raise ValueError('write "null" in quotes: a bare null is YAML\'s null, not the word')
    return value


class BodyConfig(_Model):
    """The JSON body of the call: a part of the client's JSON body, or a template. Exactly
    one of `select` and `template`. Sent with `Content-Type: application/json` (unless the
    backend's `headers` set one)."""

    select: str | None = None
    """Dot path into the client's JSON body; its value is sent as the backend's JSON body."""

    template: JsonValue = None
    """Any JSON, sent with its references filled in, compiled at load. A string that is
    exactly one reference (`"{body.count}"`) becomes the value with its JSON type (a
    number stays a number, an array an array); a `[*]` reference gives the array of the
    values at every element (`"{body.items[*].sku}"`), or with `for_each` the value at this
    call's element; a string mixing text and references stays a string. A reference may
    end in a conversion, `:int`, `:float`, `:str` or `:bool` (`"{query.n:int}"`; see the
    README). References are those of `path`, and `{body.dot.path}` (the client's JSON
    body). A client value that is missing or does not convert is a 400 before any upstream
    is called; an upstream's, outcome `invalid_reference`."""


class GraphQLConfig(_Model):
    """Call a GraphQL API: POST `{"query", "operationName", "variables"}` as
    `application/json`. The response's `data` is the result (then `select` and the other
    transforms apply to it); a response with `errors`, with or without `data`, has outcome
    `graphql_error` (the backend's `default` applies; `debug: true` shows the errors).
    `gateway check` parses the query."""

    query: str
    """The GraphQL document (a query or a mutation; not a subscription). A syntax error is
    a config error naming its line and column in the query."""

    variables: dict[str, JsonValue] = Field(default_factory=dict)
    """The operation's variables: a body template (see `body.template`), so references
    keep their JSON type and may convert (`"{query.first:int}"`). Every variable the
    operation declares non-null without a default must be given."""

    operation_name: str | None = None
    """The operation to run (`operationName`), needed when the document has several."""


class BackendConfig(_Model):
    """One upstream call of an endpoint (or a static value), and how its JSON result is
    shaped and placed."""

    name: Name
    """Unique within the endpoint; used in `X-Gateway-Backends` and error bodies."""

    upstream: str | None = None
    """Name of an entry under `upstreams`; every backend but a `static` one has one."""

    path: str | None = None
    """Path and optional query appended to the upstream's URL (required, but for a
    `graphql` backend, where omitted means the upstream's URL itself, and a `static` one,
    which has none). May use references: `{param}` (an endpoint path parameter),
    `{query.NAME}`, `{header.NAME}`, `{body.dot.path}` (the client's JSON body) and
    `{BACKEND.dot.path}` (another backend's selected result, which makes this backend
    depend on it); every value is percent-encoded whole."""

    method: Method = "GET"
    """HTTP method of the upstream call. For passthrough endpoints the client's method is
    used; a `graphql` backend's is POST."""

    required: bool = False
    """If this backend fails, the whole request fails (502, or 504 on timeout) and the
    other backends are cancelled at once."""

    timeout: Duration | None = None
    """Bounds this call from connect to the last body byte (overrides the upstream's and
    `defaults.timeout`). For passthrough: the wait for the response head and each gap
    between body chunks; for a server-sent event stream, make it longer than the stream's
    heartbeat interval (a comment such as `: ping` counts), or a quiet stream is cut."""

    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers for this call; values may use `${VAR}` and the same references as
    `path` (`{{` and `}}` are literal braces). Names are case-insensitive (RFC 9110
    section 5.1): two that differ only by case are a config error. Each field is sent
    once: a name set here replaces the upstream's header of that name, and either
    replaces a client header of that name listed in the endpoint's `forward_headers` (and
    the `Accept: application/json` an aggregated call sends by default)."""

    when: ConditionConfig | list[ConditionConfig] | None = None
    """Call this backend only if the condition (or every condition of a list) holds.
    Otherwise its outcome is `skipped`: left out of the body, not a failure."""

    for_each: bool = False
    """With a `[*]` reference (`{orders.items[*].product_id}`, or the client's
    `{body.items[*].sku}`): call once per array element, concurrently, and return the
    results as a list in element order. Every `[*]` reference of the backend (path,
    headers, body template) walks that one array and reads this call's element."""

    max_calls: int = Field(default=32, ge=1, le=1024)
    """With `for_each`: the most calls one request may make; a longer array fails this
    backend with `invalid_reference` (a longer array in the client's body is a 400)."""

    into: str | None = None
    """With `for_each`: put each call's result into the element its value came from
    (`orders[*].product`), instead of a list of its own. The path names the array the
    `for_each` reference walks (a group's or a backend's, as the reference names it), then
    `[*]`, then the key to set. If the backend fails as a whole, its `default` (if any) goes
    into every element; otherwise the elements stay as they were. Not with `group`. An
    element that is not an object (or has something other than an object on the key's
    path) cannot take its result: a failed item (`on_item_error`); an array that another
    backend changed (its key in the response, with another length) fails the backend
    (`invalid_reference`)."""

    on_item_error: Annotated[Literal["fail", "skip", "null"], BeforeValidator(_item_errors)] = (
        "fail"
    )
    """With `for_each`: what a failed call does, and an element no call can be made for
    (its referenced value missing or unusable) or that cannot take its result (`into`).
    `fail`: fails the backend (its other calls are cancelled); `skip`: its element is left
    out (of the list, or of the array `into` fills); `"null"` (quoted: a bare `null` is
    YAML's): its element or key gets `null`. With `skip` and `"null"` the backend's outcome
    stays `ok`; `debug` counts the failed items."""

    body: Literal["forward"] | BodyConfig | None = None
    """For a POST, PUT or PATCH call: `forward` sends the client's JSON body unchanged;
    `{select: dot.path}` sends that part of it; `{template: ...}` sends JSON built from
    references (see `body.template`)."""

    graphql: GraphQLConfig | None = None
    """Make this a GraphQL call (see `graphql`): not with `body`."""

    static: JsonValue = None
    """Make this a static backend: no upstream and no call; it answers this value at once
    (outcome `ok`, duration 0), which `select`, `allow`, `deny`, `rename` and `group` shape
    and other backends may reference, as any result. For mocks, defaults and feature
    flags. Not with `upstream`, `path`, `method` or any setting of a call."""

    follow_redirects: bool = False
    """Follow redirects from the upstream, to the same origin only (scheme, host and port
    from config), at most `max_redirects` times. Off: a 3xx is outcome `http_3xx`."""

    max_redirects: int = Field(default=3, ge=1, le=10)
    """With `follow_redirects`: how many redirects one call may follow."""

    retries: RetryConfig | None = None
    """This backend's retries, instead of the upstream's; `null` turns them off. The retry
    budget stays the upstream's."""

    hedge: HedgeConfig | None = None
    """This backend's hedging, instead of the upstream's; `null` turns it off."""

    circuit_breaker: CircuitBreakerConfig | None = None
    """A circuit breaker of this backend's own, instead of the upstream's; `null` turns it
    off for this backend."""

    bulkhead: BulkheadConfig | None = None
    """A bulkhead of this backend's own, instead of the upstream's; `null` turns it off for
    this backend."""

    cache: BackendCacheConfig | None = None
    """Cache this backend's responses (GET only). The key covers the method, the final URL
    and every header sent upstream but the gateway's per-request ones (client address,
    `Via`, trace ids)."""

    return_headers: list[str] = Field(default_factory=list)
    """Response headers of this call copied into the aggregated response (when it
    succeeds); a later backend's value replaces an earlier one's. An incomplete response
    drops `Cache-Control`, `Expires`, `CDN-Cache-Control` and `Surrogate-Control` and says
    `Cache-Control: no-store` instead."""

    select: str | None = None
    """Dot path taken from the response body first (`data`, `data.items`, `items.0`).
    Missing: outcome `invalid_response`."""

    allow: list[str] | None = None
    """Dot paths to keep (nesting kept; applied to each element of an array)."""

    deny: list[str] | None = None
    """Dot paths to remove (applied to each element of an array). Not with `allow`."""

    rename: dict[str, str] = Field(default_factory=dict)
    """`{dot.path: new_key}`: renames a key in place (in each element of an array)."""

    group: str | None = None
    """Put the result under this key of the merged response."""

    default: JsonValue = None
    """Used in place of the result when this backend fails. Without it, a failed
    optional backend is left out of the response."""


class EndpointConfig(_Model):
    """A client-facing route whose request fans out to its backends."""

    path: str
    """Route path; whole segments `{name}` capture path parameters."""

    method: Method = "GET"
    """HTTP method of the route."""

    deadline: Duration | None = None
    """Bounds the whole request (overrides `defaults.deadline`). When it expires,
    unfinished backends are cancelled and the response is built from what finished.
    Not used by passthrough endpoints, whose backend `timeout` bounds every wait instead."""

    forward_headers: list[str] = Field(default_factory=list)
    """Client request headers passed to every backend. None by default. A header the
    config sets on a call (upstream or backend `headers`) is sent instead of the client's
    of that name; a forwarded `Accept` replaces the default `Accept: application/json`."""

    forward_query: list[str] = Field(default_factory=list)
    """Client query parameters appended to every backend call. None by default."""

    debug: bool = False
    """Add `"_gateway": {"backends": {NAME: {outcome, started_ms, duration_ms,
    depends_on, retries, hedges}}}` to the response body, to see the critical path; also
    `reason` for a backend that failed, `host` (the origin that answered) for upstreams
    with several `urls`, `cache` for a call the cache answered, `failed_items` for a
    `for_each` backend whose failed calls did not fail it (`on_item_error`), and `errors`
    (the response's own) for a GraphQL backend whose outcome is `graphql_error`. Not added
    to a body that `shape.select` made something other than an object."""

    passthrough: bool = False
    """Stream one backend's response (status, headers, body) to the client unchanged,
    and the client's method, body and Content-Type to the upstream. Each chunk is sent on
    as it arrives (compressed ones flushed), so server-sent events reach the client as
    they are sent; a client that leaves closes the upstream connection."""

    websocket: WebSocketConfig | bool = False
    """With `passthrough: true` and `method: GET`: accept WebSocket upgrades too, relayed
    to the backend's upstream (`true`: the default settings; or settings). Requests
    without an upgrade are still passed through. The origin check, authentication, rate
    limits and `query_schema` apply to the upgrade, before any upstream call."""

    rate_limit: RateLimitConfig | list[RateLimitConfig] | None = None
    """Limit requests to this endpoint; with a list, every limit applies (per client and
    global, say). Over a limit: 429 with `Retry-After`."""

    cache: EndpointCacheConfig | None = None
    """Cache the merged response (not for passthrough endpoints)."""

    auth: AuthRef = None
    """Policies under `auth` that a request must pass before any rate limit or upstream
    call: a name, or a list of names (any one may pass, tried in order). `null` opts out
    of `defaults.auth`."""

    response_headers: dict[str, str] = Field(default_factory=dict)
    """Fields added to this endpoint's responses, after `defaults.response_headers` (see
    there)."""

    remove_headers: list[str] = Field(default_factory=list)
    """Fields removed from this endpoint's responses, with `defaults.remove_headers`. A
    field named in `response_headers` too, here or in `defaults`, is a config problem."""

    cors: CorsConfig | Literal[False] | None = None
    """Cross-origin calls from browsers (see `defaults.cors`): this endpoint's own settings,
    replacing the defaults' whole (not merged), or `false` for none. Unset: the defaults'."""

    compression: CompressionConfig | bool | None = None
    """This endpoint's compression: `false` (off), `true` (the settings of
    `defaults.compression`, or the built-in ones where that is `false`) or settings of its
    own, with the keys of `defaults.compression`, which replace the defaults' whole.
    Default: `defaults.compression`. Off, the gateway does not negotiate: answers go as
    they are, whatever `Accept-Encoding` says."""

    merge: MergeConfig | None = None
    """How the backends' results merge (replacing `defaults.merge` whole)."""

    shape: ShapeConfig | None = None
    """Transforms of the merged body, with `[*]` in paths (not for passthrough endpoints)."""
    request_schema: SchemaSource = None
    """A JSON Schema the client's JSON body must satisfy (see docs/validation.md): inline,
    or the path of a JSON (`.json`) or YAML file, relative to the config file's directory.
    Checked against its metaschema at load (draft 2020-12 unless `$schema` names 2019-09,
    7, 6 or 4); `$ref` within the schema only; `format` is asserted. A body that fails is
    answered 400 `schema_violation` with the JSONPath of the failing value
    (`"path": "$.items[0].qty"`) and the keyword, after authentication and rate limits and
    before any upstream is called. POST, PUT and PATCH endpoints; not passthrough."""

    query_schema: SchemaSource = None
    """A JSON Schema the client's query parameters must satisfy, inline or a file (as
    `request_schema`). The instance is an object with one member per parameter: its first
    value as a string, or the list of all its values where the schema's top-level
    `properties` give it `type: array`. Values stay strings: match numbers with `pattern`.
    A failure is 400 `schema_violation` naming the `parameter`."""

    backends: list[BackendConfig] = Field(min_length=1)
    """The upstream calls; their results merge in this order."""


class TracingConfig(_Model):
    """Export spans over OTLP/HTTP (needs the `otel` extra). Trace context is propagated
    to upstreams with or without this section."""

    otlp_endpoint: str
    """OTLP/HTTP traces endpoint, like `http://127.0.0.1:4318/v1/traces`."""

    service_name: str = "trio-gateway"
    """The `service.name` resource attribute of exported spans."""


class StateConfig(_Model):
    """Where rate-limit counters and caches live. In memory (the default) each worker
    process keeps its own; with `redis`, every worker of every instance shares them."""

    redis: str | None = None
    """`redis://HOST:PORT/DB` (or `rediss://` for TLS). May use `${VAR}` for a password:
    `redis://:${REDIS_PASSWORD}@HOST:PORT/0`."""

    timeout: Duration = DEFAULT_STATE_TIMEOUT_S
    """Bounds each Redis call. When Redis is down or slow, the gateway keeps answering:
    caches are skipped and rate limits follow `on_error`."""

    on_error: Literal["open", "closed"] = "open"
    """When Redis cannot decide a rate limit: `open` lets the request through, `closed`
    answers 503."""

    key_prefix: str = DEFAULT_NAMESPACE
    """Prefix of every Redis key, so several gateways can share one Redis."""

    memory_max_size: Size = DEFAULT_MEMORY_MAX_BYTES
    """The in-memory store's bound (per worker): least recently used entries go first."""


class GatewayConfig(_Model):
    """A gateway config file."""

    version: Literal[1]
    """Config format version; must be 1."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    """Listening options."""

    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    """Defaults for upstreams, endpoints and backends."""

    upstreams: dict[Name, UpstreamConfig] = Field(default_factory=dict)
    """Named upstream services."""

    endpoints: list[EndpointConfig] = Field(default_factory=list)
    """The aggregation endpoints."""

    tracing: TracingConfig | None = None
    """Span export (optional)."""

    state: StateConfig = Field(default_factory=StateConfig)
    """Where rate limits and caches are kept: in memory per worker, or on Redis."""

    auth: dict[Name, AuthPolicyConfig] = Field(default_factory=dict)
    """Named authentication policies (see docs/auth.md), referred to by `endpoints[].auth`
    and `defaults.auth`."""


def endpoint_merge(config: GatewayConfig, endpoint: EndpointConfig) -> MergeConfig | None:
    """An endpoint's merge settings: its own, else the defaults'."""
    return endpoint.merge if endpoint.merge is not None else config.defaults.merge


def backend_has_default(backend: BackendConfig) -> bool:
    """Whether the config set `default` (``default: null`` counts)."""
    return "default" in backend.model_fields_set


def endpoint_auth(config: GatewayConfig, endpoint: EndpointConfig) -> list[str]:
    """The policy names an endpoint requires (any one may pass): its own ``auth`` when the
    config sets it (``auth: null`` included, which opts out), else ``defaults.auth``."""
    ref = endpoint.auth if "auth" in endpoint.model_fields_set else config.defaults.auth
    if ref is None:
        return []
    return [ref] if isinstance(ref, str) else list(ref)


def endpoint_cors(config: GatewayConfig, endpoint: EndpointConfig) -> CorsConfig | None:
    """An endpoint's CORS settings: its own, else the defaults'; None for none."""
    if endpoint.cors is False:
        return None
    return endpoint.cors if endpoint.cors is not None else config.defaults.cors


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file, with every field's documentation."""
    return GatewayConfig.model_json_schema()
