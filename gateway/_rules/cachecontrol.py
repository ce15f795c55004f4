"""Response caching rules for a shared cache (pure): how long an upstream response may be
reused, and the key it is stored under.

The gateway is a *shared* cache (RFC 9111 section 1): what it stores for one client it may
give to another. It only stores responses with explicit freshness and never revalidates,
so anything that would need revalidation is not stored. A response is stored for
``ttl_s`` seconds when all of these hold:

- the status is final and not 206 or 304 (section 3): partial and not-modified responses
  need a stored response to combine with, which this cache does not do;
- Cache-Control parses (section 5.2: ``token [ "=" ( token / quoted-string ) ]``, comma
  separated, directive names case-insensitive) and has none of ``no-store``, ``private``
  (section 5.2.2.7: a shared cache must not store it; the field-qualified form is treated
  like the plain one) or ``no-cache`` (section 5.2.2.4: reuse needs revalidation). A
  malformed field, or a directive repeated with different values, is not stored
  (section 4.2.1 allows treating conflicts as stale);
- it has explicit freshness: ``s-maxage``, which wins over ``max-age`` for a shared cache
  (section 5.2.2.10), else ``max-age``, else ``Expires`` minus ``Date`` (section 4.2.1;
  an invalid ``Expires`` such as ``0`` means already expired, section 5.3). No heuristic
  freshness (section 4.2.2): a response without any of these is not stored;
- the remaining freshness is positive: lifetime minus the current age, where the age is
  the larger of ``Age`` and ``now - Date`` (section 4.2.3, without the request-time
  correction: the caller stores the response as it arrives). An invalid ``Age`` is
  ignored (section 5.1);
- ``Vary`` is not ``*`` and names only request fields that are part of the cache key
  (section 4.1): otherwise one client's variant could be served to another;
- if the request carried ``Authorization``, the response allows a shared cache to reuse it
  with ``public``, ``s-maxage`` or ``must-revalidate`` (section 3.5);
- ``must-understand`` is honoured (section 5.2.2.3) only for status codes this cache
  understands (the heuristically cacheable ones of RFC 9110 section 15.1);
- it sets no cookie: stricter than RFC 9111, which leaves it to the cache, because a
  ``Set-Cookie`` meant for one client must never be replayed to another.

The rules that depend on nothing but the response (status, ``Cache-Control``,
``Set-Cookie``, ``Vary: *``) are :func:`shared_store_refusal`, which both caches use: the
backend cache through :func:`shared_freshness`, the aggregate cache on the merged
response's headers.

An aggregated response that is not complete must not be kept by anyone downstream either
(a CDN or browser would go on serving a degraded answer): it is sent with
``Cache-Control: no-store`` (section 5.2.2.5) and without any backend's freshness fields
(:data:`FRESHNESS_FIELDS`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

DEFAULT_KEY_PREFIX = "cache:"

# RFC 9111 section 1.2.2: delta-seconds too large to represent are 2^31.
MAX_DELTA_SECONDS = 2**31

# RFC 9110 section 15.1: heuristically cacheable status codes, the ones this cache
# "understands" for must-understand.
UNDERSTOOD_STATUS = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})

# Response fields that make a response reusable downstream: Cache-Control and Expires
# (RFC 9111 sections 5.2 and 5.3), and the targeted fields a CDN obeys before Cache-Control
# (RFC 9213 CDN-Cache-Control; Surrogate-Control).
FRESHNESS_FIELDS = frozenset(
    {b"cache-control", b"expires", b"cdn-cache-control", b"surrogate-control"}
)

# The field sent on a response no cache may keep (RFC 9111 section 5.2.2.5).
NO_STORE = (b"cache-control", b"no-store")

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

Directives = dict[str, str | None]


@dataclass(frozen=True)
class Freshness:
    """Whether a response may be stored by the gateway's shared cache, and for how long.

    Args:
        ttl_s: seconds the stored response stays fresh; 0 when it is not stored.
        reason: why it is not stored, one of ``status``, ``malformed``,
            ``must-understand``, ``no-store``, ``private``, ``no-cache``, ``set-cookie``,
            ``vary``, ``authorization``, ``no-freshness``, ``stale``; empty when stored.
        vary: the lower-cased request field names the response varies on.
    """

    ttl_s: float
    reason: str = ""
    vary: tuple[bytes, ...] = ()

    @property
    def storable(self) -> bool:
        return not self.reason


def _not_stored(reason: str, vary: tuple[bytes, ...] = ()) -> Freshness:
    return Freshness(0.0, reason, vary)


# Response fields about one representation's freshness or validation, besides
# FRESHNESS_FIELDS: a degraded aggregate must not carry a backend's validators or age
# (RFC 9110 sections 8.8.2 Last-Modified, 8.8.3 ETag; RFC 9111 section 5.1 Age).
VALIDATOR_FIELDS = frozenset({b"etag", b"last-modified", b"age"})


# Vendor fields that tell a CDN or proxy how long to keep a response, besides the targeted
# ``...Cache-Control`` and ``...Surrogate-Control`` ones: Akamai's Edge-Control, nginx's
# X-Accel-Expires (which nginx prefers to Cache-Control).
_VENDOR_FRESHNESS = frozenset({b"edge-control", b"x-accel-expires"})


def is_freshness_field(name: bytes) -> bool:
    """``Cache-Control``, ``Expires``, ``Surrogate-Control``, every targeted
    ``...Cache-Control`` field (RFC 9213 section 2: ``CDN-Cache-Control`` and vendor ones
    such as ``Cloudflare-CDN-Cache-Control`` or ``Akamai-Cache-Control``), every
    ``...Surrogate-Control`` and the vendor fields ``Edge-Control`` and
    ``X-Accel-Expires``. ``name`` lower-case."""
    return (
        name in FRESHNESS_FIELDS
        or name.endswith((b"cache-control", b"surrogate-control"))
        or name in _VENDOR_FRESHNESS
    )


# The response fields whose presence can make a response unshareable (a quick test before
# parsing: most upstream replies carry none of them).
_SHARING_FIELDS = frozenset({b"cache-control", b"set-cookie", b"vary"})


def may_share(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a response (of any status) may go to other clients than the one it was
    made for: :func:`shared_store_refusal` as for a 200, with a fast path for responses
    without Cache-Control, Set-Cookie or Vary. Names lower-case, as the transport gives
    them."""
    if not any(name in _SHARING_FIELDS for name, _ in headers):
        return True
    return shared_store_refusal(200, headers) is None


def combine_cache_control(values: Sequence[str]) -> str:
    """One Cache-Control for a response merged from several backends' (``values``: the
    field value each returned), as strict as the strictest: ``no-store`` if any says so
    or any does not parse; ``private``, ``no-cache`` and ``must-revalidate`` if any says
    so; ``public`` only if all do and none is private; the smallest ``max-age`` and
    ``s-maxage`` given. Other directives are dropped: no rule combines them safely.
    (RFC 9111 section 5.2.2.)"""
    parsed = [parse_cache_control([value]) for value in values]
    if any(d is None or "no-store" in d for d in parsed):
        return "no-store"
    directives = [d for d in parsed if d is not None]
    out: list[str] = []
    private = any("private" in d for d in directives)
    if private:
        out.append("private")
    elif directives and all("public" in d for d in directives):
        out.append("public")
    for flag in ("no-cache", "must-revalidate"):
        if any(flag in d for d in directives):
            out.append(flag)
    ages = [_delta_seconds(d["max-age"]) for d in directives if "max-age" in d]
    # what a shared cache would use of each: s-maxage, else max-age (section 5.2.2.10)
    shared = [
        _delta_seconds(d["s-maxage"] if "s-maxage" in d else d["max-age"])
        for d in directives
        if "s-maxage" in d or "max-age" in d
    ]
    if any(age is None for age in (*ages, *shared)):
        return "no-store"
    if ages:
        out.append(f"max-age={min(a for a in ages if a is not None)}")
    if not private and any("s-maxage" in d for d in directives):
        out.append(f"s-maxage={min(a for a in shared if a is not None)}")
    return ", ".join(out) if out else "no-store"


def parse_cache_control(values: Iterable[str]) -> Directives | None:
    """Parse Cache-Control field lines into ``{directive: argument or None}``; directive
    names are lower-cased, quoted-string arguments unquoted.

    Returns:
        None if a line is malformed or a directive repeats with a different argument.
    """
    directives: Directives = {}
    for value in values:
        items = _split_directives(value)
        if items is None:
            return None
        for name, argument in items:
            if name in directives and directives[name] != argument:
                return None
            directives[name] = argument
    return directives


def _split_directives(text: str) -> list[tuple[str, str | None]] | None:
    """``#cache-directive`` (RFC 9110 section 5.6.1: empty list elements are allowed)."""
    items: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t,":
            i += 1
            continue
        j = i
        while j < n and text[j] in _TCHAR:
            j += 1
        if j == i:
            return None
        name = text[i:j].lower()
        argument: str | None = None
        if j < n and text[j] == "=":
            j += 1
            if j < n and text[j] == '"':
                quoted = _quoted_string(text, j)
                if quoted is None:
                    return None
                argument, j = quoted
            else:
                k = j
                while j < n and text[j] in _TCHAR:
                    j += 1
                if j == k:
                    return None
                argument = text[k:j]
        items.append((name, argument))
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] != ",":
            return None
        i = j
    return items


def _quoted_string(text: str, start: int) -> tuple[str, int] | None:
    """RFC 9110 section 5.6.4, from the opening quote at ``start``: (content, end index)."""
    out: list[str] = []
    j, n = start + 1, len(text)
    while j < n:
        c = text[j]
        if c == '"':
            return "".join(out), j + 1
        if c == "\\":
            j += 1
            if j >= n:
                return None
            c = text[j]
        if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F:
            return None
        out.append(c)
        j += 1
    return None


def _delta_seconds(argument: str | None) -> int | None:
    """``delta-seconds = 1*DIGIT`` (RFC 9111 section 1.2.2), capped at 2^31."""
    if not argument or not argument.isascii() or not argument.isdigit():
        return None
    return min(int(argument), MAX_DELTA_SECONDS)


def _http_date_s(value: str) -> float | None:
    """An HTTP-date (RFC 9110 section 5.6.7) as seconds since the epoch; None if invalid."""
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "GMT" or "-0000": HTTP dates are always UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _field_names(values: Iterable[str]) -> list[str]:
    return [name.strip().lower() for value in values for name in value.split(",") if name.strip()]


def _lines(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, list[str]]:
    """Field values by lower-case name, lines in order."""
    lines: dict[bytes, list[str]] = {}
    for name, value in headers:
        lines.setdefault(name.lower(), []).append(value.decode("latin-1"))
    return lines


def _refusal(
    status: int,
    lines: dict[bytes, list[str]],
    directives: Directives | None,
    vary_names: list[str],
) -> str | None:
    """The response-only rules of the module docstring, in order: the first that refuses."""
    if status < 200 or status in (206, 304):
        return "status"
    if directives is None:
        return "malformed"
    if "must-understand" in directives:
        if status not in UNDERSTOOD_STATUS:
            return "must-understand"
    elif "no-store" in directives:
        return "no-store"
    if "private" in directives:
        return "private"
    if "no-cache" in directives:
        return "no-cache"
    if b"set-cookie" in lines:
        return "set-cookie"
    if "*" in vary_names:
        return "vary"
    return None


def shared_store_refusal(status: int, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a shared cache must never store this response, whatever its key or freshness;
    None when it may be stored (freshness still decides for how long).

    Refused: a status that is not final or is 206/304 (``status``); an unparsable
    Cache-Control (``malformed``); ``no-store`` (``must-understand`` with a status this
    cache does not understand: ``must-understand``), ``private``, ``no-cache``; a
    ``Set-Cookie`` (``set-cookie``); ``Vary: *`` (``vary``). The reasons are the ones of
    :class:`Freshness`.

    Args:
        status: the response status code.
        headers: the response header fields, names in any case.
    """
    lines = _lines(headers)
    return _refusal(
        status,
        lines,
        parse_cache_control(lines.get(b"cache-control", ())),
        _field_names(lines.get(b"vary", ())),
    )


def shared_freshness(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    now_s: float,
    key_headers: frozenset[bytes] = frozenset(),
    request_authorized: bool = False,
) -> Freshness:
    """How long the gateway may reuse an upstream response (the rules are in the module
    docstring).

    Args:
        status: the response status code.
        headers: the response header fields, names in any case.
        now_s: the wall-clock time the response arrived, in seconds since the epoch (the
            same clock as ``Date`` and ``Expires``).
        key_headers: the lower-case request field names that are part of the cache key
            (see :func:`cache_key`); a ``Vary`` naming any other field is not stored.
        request_authorized: the request carried ``Authorization``.
    """
    lines = _lines(headers)
    vary_names = _field_names(lines.get(b"vary", ()))
    vary = tuple(name.encode("latin-1") for name in vary_names)
    directives = parse_cache_control(lines.get(b"cache-control", ()))
    refusal = _refusal(status, lines, directives, vary_names)
    if refusal is not None:
        return _not_stored(refusal, vary)
    assert directives is not None
    if any(name not in key_headers for name in vary):
        return _not_stored("vary", vary)
    if request_authorized and not (
        "public" in directives or "s-maxage" in directives or "must-revalidate" in directives
    ):
        return _not_stored("authorization", vary)

    date_s = None
    if b"date" in lines:
        date_s = _http_date_s(lines[b"date"][0])
    if "s-maxage" in directives or "max-age" in directives:
        directive = "s-maxage" if "s-maxage" in directives else "max-age"
        lifetime = _delta_seconds(directives[directive])
        if lifetime is None:
            return _not_stored("malformed", vary)
        lifetime_s = float(lifetime)
    elif b"expires" in lines:
        expires = set(lines[b"expires"])
        expires_s = _http_date_s(expires.pop()) if len(expires) == 1 else None
        if expires_s is None:  # invalid or conflicting: already expired (section 5.3)
            return _not_stored("stale", vary)
        lifetime_s = expires_s - (now_s if date_s is None else date_s)
    else:
        return _not_stored("no-freshness", vary)

    age_s = 0.0
    if b"age" in lines:
        first = lines[b"age"][0].split(",")[0].strip()
        age = _delta_seconds(first)
        if age is not None:
            age_s = float(age)
    if date_s is not None:
        age_s = max(age_s, now_s - date_s)
    ttl_s = lifetime_s - age_s
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        return _not_stored("stale", vary)
    return Freshness(ttl_s, "", vary)


def cache_key(
    method: str,
    url: str,
    headers: Iterable[tuple[bytes, bytes]],
    key_headers: frozenset[bytes] = frozenset(),
    *,
    prefix: str = DEFAULT_KEY_PREFIX,
) -> str:
    """The store key of a response: ``prefix`` and the SHA-256 (hex) of the method, the
    final upstream URL and the values of the request fields in ``key_headers`` (the
    forwarded fields the response may vary on).

    Field names match case-insensitively; several lines of one field are joined in order.
    An absent field and an empty one give different keys. Every part is length-prefixed,
    so no two different requests share a key by concatenation.
    """
    wanted = sorted({name.lower() for name in key_headers})
    wanted_set = frozenset(wanted)
    values: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        low = name.lower()
        if low in wanted_set:
            values.setdefault(low, []).append(value)
    digest = hashlib.sha256()

    def part(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)

    part(method.upper().encode("ascii"))
    part(url.encode("utf-8"))
    for name in wanted:
        part(name)
        if name in values:
            part(b"1" + b", ".join(values[name]))
        else:
            part(b"0")
    return prefix + digest.hexdigest()
