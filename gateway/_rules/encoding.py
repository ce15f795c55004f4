"""Content codings of responses (pure): which coding a client gets, and which responses
may be compressed and how their head changes.

No I/O: the send wrapper of :mod:`gateway._compress` calls these on each response.

Negotiation (RFC 9110 section 12.5.3, Accept-Encoding):

- No Accept-Encoding field: identity. A field whose value is empty: identity ("the user
  agent does not want any content coding").
- Codings compare case-insensitively (RFC 9110 section 8.4.1); ``x-gzip`` is ``gzip``
  (section 8.4.1.3). A member that is not a token, or whose weight is not a qvalue (section
  12.4.2: ``0`` to ``1`` with at most three decimals; ``q`` in any case), is ignored, as is
  an empty list element (section 5.6.1). Other parameters are ignored. A coding listed
  twice counts with its lowest weight (excluded anywhere is excluded).
- ``*`` gives its weight to every coding not listed; an explicit ``q=0`` excludes a
  coding even under ``*``.
- The supported coding with the highest weight wins, ties broken by the configured
  order. ``identity`` only when no supported coding is acceptable: the gateway answers
  compressed whenever the client accepts a coding it compresses with.
- ``identity`` is acceptable unless excluded by ``identity;q=0``, or ``*;q=0`` without an
  entry for ``identity``. Excluded, with no supported coding acceptable: 406 (section
  15.5.7). Excluded, with a coding acceptable: every body is compressed, whatever its
  size or type (never a silent identity), within the rules below; a body those rules
  leave alone is answered 406 too unless it is encoded with codings the client accepts
  (:func:`unacceptable`): a part (206), ``no-transform``, a digest, or a coding the
  client excludes.

What is never compressed:

- a response without content: status 1xx, 204 (section 15.3.5), 304 (section 15.4.5);
- a part of a representation: 206 or a Content-Range (sections 14.4, 15.3.7): its ranges
  are offsets into the identity form;
- a response that already has a Content-Encoding (section 8.4: a passthrough upstream's
  coding is left as it is); ``identity`` alone encodes nothing, so does not count (and
  gives way to the coding compressed with);
- ``Cache-Control: no-transform`` (RFC 9111 section 5.2.2.6: no intermediary may change
  the content coding);
- a response carrying a digest of its content, Content-Digest or Repr-Digest (RFC 9530
  sections 2 and 3): both are computed over the bytes as encoded, which compressing
  would change;
- a type outside the configured ``types`` (the media type without parameters, compared
  case-insensitively, RFC 9110 section 8.3.1; ``text/*`` covers every subtype), or a
  body shorter than ``min_size``: except when identity is excluded.

A compressed response says ``Content-Encoding``; a strong ETag becomes weak (``"x"`` ->
``W/"x"``, sections 8.8.1 and 8.8.3: the compressed bytes are a different representation,
and a strong validator must change with them); ``Accept-Ranges`` is dropped (ranges would
address the identity bytes); the Content-Length is the compressed one (one body) or left
out (a stream, or a HEAD answer, which section 9.3.2 allows). A 304 to a request that chose
a coding carries the weak ETag too: it stands for the 200 that would have been compressed
(section 15.4.5), and a weak validator is never wrong for it. Every answer of an endpoint
with compression carries ``Vary: Accept-Encoding`` (section 12.5.5): static where no
upstream's Vary can reach the answer, merged with it into one field otherwise.

Default levels, measured with ``bench/compress_cost.py`` on a merged-JSON body (medians
on the 2-core development machine; bench/README.md, "compress_cost.py"). At 20 KiB:
brotli 3 takes 0.13 to 0.19 ms and leaves 20.4% of the bytes, brotli 4 0.21 to 0.34 ms
for 19.8%, brotli's library default, 11, 25 to 38 ms for 16.7%; zstd 3 (its library
default) 0.04 ms for 20.4%; gzip 5 0.20 to 0.28 ms for 21.1%, gzip 6 (zlib's default) a
tenth more for 20.7%, gzip 4 22.3%. Each default is the level past which the next saves
under 3% of the bytes for 10% to 70% more CPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

CODINGS = ("br", "zstd", "gzip")
# The levels a config may set: brotli's qualities; zstd's standard levels (20 to 22 are
# "ultra" levels, tens of MiB of memory per stream); zlib's (0 would store uncompressed).
LEVEL_RANGES: Mapping[str, tuple[int, int]] = {"br": (0, 11), "zstd": (1, 19), "gzip": (1, 9)}
DEFAULT_LEVELS: Mapping[str, int] = {"br": 3, "zstd": 3, "gzip": 5}
DEFAULT_MIN_SIZE_BYTES = 1024
DEFAULT_TYPES = ("application/json", "text/*")

# From this many bytes a body (or a streamed chunk) is compressed in a worker thread
# (``trio.to_thread``) rather than on the event loop: the size whose compression took
# longer than a thread hop costs the loop (``bench/compress_cost.py``; 0: always).
THREAD_CUTOFF_BYTES: Mapping[str, Mapping[int, int]] = {
    "br": {0: 49664, 1: 49664, 2: 18688, 3: 14848, 4: 6912, 5: 4608, 6: 4352, 7: 4352,
           8: 4352, 9: 0, 10: 0, 11: 0},
    "zstd": {1: 89856, 2: 85504, 3: 69120, 4: 62976, 5: 18688, 6: 17408, 7: 12800, 8: 12800,
             9: 9728, 10: 9472, 11: 4096, 12: 3072, 13: 2048, 14: 1536, 15: 768, 16: 768,
             17: 512, 18: 512, 19: 512},
    "gzip": {1: 28160, 2: 19456, 3: 19456, 4: 14592, 5: 11776, 6: 11008, 7: 10496, 8: 9216,
             9: 9216},
}  # fmt: skip

IDENTITY = "identity"
_ALIASES = {"x-gzip": "gzip"}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110 section 12.4.2


def parse_accept_encoding(values: Iterable[bytes]) -> dict[str, float]:
    """The weight of each coding the field lines list (lower-case; ``*`` included).

    Never raises: malformed members are left out (see the module docstring)."""
    weights: dict[str, float] = {}
    for value in values:
        text = value.decode("latin-1")
        for member in text.split(","):
            coding, _, params = member.partition(";")
            coding = coding.strip().lower()
            if not coding:
                continue  # an empty list element (RFC 9110 section 5.6.1)
            if not _TOKEN.fullmatch(coding):
                continue
            weight = _weight(params)
            if weight is None:
                continue
            coding = _ALIASES.get(coding, coding)
            weights[coding] = min(weight, weights.get(coding, weight))
    return weights


def _weight(params: str) -> float | None:
    """The ``q`` of a member's parameters: 1 without one, None if malformed."""
    weight = 1.0
    if not params:
        return weight
    for param in params.split(";"):
        name, equals, raw = param.partition("=")
        if name.strip().lower() != "q":
            continue
        raw = raw.strip()
        if not equals or not _QVALUE.fullmatch(raw):
            return None
        weight = float(raw)
    return weight


@dataclass(frozen=True)
class Choice:
    """The outcome of negotiation: ``coding`` to compress with (None: identity), and
    whether identity was acceptable. Neither: 406."""

    coding: str | None
    identity_ok: bool

    @property
    def acceptable(self) -> bool:
        return self.coding is not None or self.identity_ok

    @property
    def forced(self) -> bool:
        """A coding was chosen and identity is excluded: compress every body."""
        return self.coding is not None and not self.identity_ok


IDENTITY_CHOICE = Choice(None, True)


def choose(weights: Mapping[str, float] | None, supported: Sequence[str]) -> Choice:
    """The coding for a client whose Accept-Encoding gave ``weights`` (None: no field),
    among ``supported`` in order of preference."""
    if not weights:
        return IDENTITY_CHOICE  # no field, or an empty one: identity only
    star = weights.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in supported:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:  # strictly: an equal weight later in the order does not win
            best, best_q = coding, q
    identity_q = weights.get(IDENTITY, star if star is not None else 1.0)
    return Choice(best, identity_q > 0)


class TypePatterns:
    """Media type patterns: ``type/subtype``, ``type/*`` or ``*/*`` (lower-case)."""

    __slots__ = ("_any", "_exact", "_prefixes", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact = frozenset(p.encode("ascii") for p in self.patterns if not p.endswith("/*"))
        self._prefixes = tuple(
            p[:-1].encode("ascii") for p in self.patterns if p.endswith("/*") and p != "*/*"
        )
        self._any = "*/*" in self.patterns

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypePatterns) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"TypePatterns({list(self.patterns)!r})"

    def matches(self, content_type: bytes | None) -> bool:
        """Whether a Content-Type value's media type (parameters ignored, any case)
        matches. No Content-Type matches only ``*/*``."""
        if self._any:
            return True
        if content_type is None:
            return False
        media = content_type.partition(b";")[0].strip().lower()
        return media in self._exact or media.startswith(self._prefixes)


def type_pattern_problem(pattern: str) -> str | None:
    """What is wrong with a ``types`` entry, or None."""
    if ";" in pattern:
        return "a media type without parameters (matching ignores them)"
    kind, slash, sub = pattern.partition("/")
    if not slash or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(sub):
        return "a media type like application/json, a type's subtypes like text/*, or */*"
    if kind == "*" and sub != "*":
        return "a wildcard type has a wildcard subtype: */*"
    if "*" in sub and sub != "*":
        return "the subtype is a name or *, like text/* (no partial wildcards)"
    return None


@dataclass(frozen=True)
class CompressionPolicy:
    """One endpoint's compression, compiled at load.

    ``codings`` in order of preference with their ``levels``; ``merge_vary``: an
    upstream's Vary can reach this endpoint's answers (passthrough, or a backend's
    ``return_headers``), so ``Vary: Accept-Encoding`` is merged into it per response
    instead of being one of the endpoint's static fields."""

    codings: tuple[str, ...]
    levels: tuple[int, ...]
    min_size_bytes: int
    types: TypePatterns
    merge_vary: bool = False

    def level(self, coding: str) -> int:
        return self.levels[self.codings.index(coding)]

    def thread_cutoff_bytes(self, coding: str) -> int:
        return THREAD_CUTOFF_BYTES[coding][self.level(coding)]


# --- the response head --------------------------------------------------------------------

VARY_VALUE = b"Accept-Encoding"
_NO_BODY_STATUS = frozenset({204, 304})
# a range of the identity bytes, a digest of the bytes as encoded
_LEFT_ALONE = frozenset({b"content-range", b"content-digest", b"repr-digest"})


@dataclass(frozen=True)
class Head:
    """What the compression rules read of a response head (one pass over its fields)."""

    content_type: bytes | None
    content_length: int | None
    # the Content-Encoding's codings in the order applied (lower-case, x-gzip as gzip)
    codings: tuple[str, ...] = ()
    # a Content-Range, no-transform or a digest: the gateway may not change the coding
    fixed: bool = False

    @property
    def encoded(self) -> bool:
        """Whether the body is to be left as it is (see the module docstring)."""
        return self.fixed or bool(self.codings)


def read_head(headers: Iterable[tuple[bytes, bytes]]) -> Head:
    codings: list[str] = []
    fixed = False
    content_type: bytes | None = None
    content_length: int | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-type":
            content_type = value
        elif lower == b"content-length":
            if value.strip().isdigit():
                content_length = int(value)
        elif lower == b"content-encoding":
            codings.extend(_content_codings(value))
        elif lower in _LEFT_ALONE or (lower == b"cache-control" and _no_transform(value)):
            fixed = True
    return Head(content_type, content_length, tuple(codings), fixed)


def _content_codings(value: bytes) -> list[str]:
    """The codings a Content-Encoding value lists (lower-case, aliases resolved), without
    ``identity``, which encodes nothing."""
    codings = []
    for member in value.decode("latin-1").split(","):
        coding = member.strip().lower()
        if coding and coding != IDENTITY:
            codings.append(_ALIASES.get(coding, coding))
    return codings


def _no_transform(value: bytes) -> bool:
    """Whether a Cache-Control value has the no-transform directive (names compare
    case-insensitively, RFC 9111 section 5.2)."""
    return any(
        part.partition(b"=")[0].strip().lower() == b"no-transform" for part in value.split(b",")
    )


def may_compress(status: int, head: Head, policy: CompressionPolicy, forced: bool) -> bool:
    """Whether a response may be compressed, as far as its head tells. The size is only
    checked here when Content-Length declares it; otherwise by :func:`big_enough`."""
    if status < 200 or status in _NO_BODY_STATUS or status == 206 or head.encoded:
        return False
    if forced:
        return True
    if not policy.types.matches(head.content_type):
        return False
    return head.content_length is None or head.content_length >= policy.min_size_bytes


def accepts(weights: Mapping[str, float], codings: Sequence[str]) -> bool:
    """Whether a client whose Accept-Encoding gave ``weights`` takes content encoded with
    every one of ``codings``: each named with a weight above 0, or under a ``*`` with one."""
    star = weights.get("*", 0.0)
    return all(weights.get(coding, star) > 0 for coding in codings)


def unacceptable(status: int, head: Head, weights: Mapping[str, float]) -> bool:
    """Whether a response to a client that excludes identity would reach it in a form it
    does not accept, since the gateway may not compress it: a body encoded with a coding
    the client does not accept, or, not encoded, a part (206, a Content-Range),
    ``no-transform`` or a digest. Its answer is 406 instead (never a silent identity); a
    response without content (1xx, 204, 304) never is."""
    if status < 200 or status in _NO_BODY_STATUS:
        return False
    if head.codings:
        return not accepts(weights, head.codings)
    return status == 206 or head.fixed


def big_enough(size: int, policy: CompressionPolicy, forced: bool) -> bool:
    return forced or size >= policy.min_size_bytes


def weak_etag(value: bytes) -> bytes:
    """``"x"`` -> ``W/"x"`` (RFC 9110 section 8.8.3); a weak one stays as it is."""
    stripped = value.strip()
    if stripped.startswith(b"W/") or not stripped.startswith(b'"'):
        return stripped
    return b"W/" + stripped


def merged_vary(values: Sequence[bytes]) -> bytes:
    """One Vary value from the field lines ``values`` with Accept-Encoding added once
    (RFC 9110 section 12.5.5: ``*`` alone says it all; names are case-insensitive)."""
    members: list[bytes] = []
    seen: set[bytes] = set()
    for value in values:
        for member in value.split(b","):
            member = member.strip()
            if member and member.lower() not in seen:
                seen.add(member.lower())
                members.append(member)
    if b"*" in seen:
        return b"*"
    if VARY_VALUE.lower() not in seen:
        members.append(VARY_VALUE)
    return b", ".join(members)


def with_vary(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with their Vary fields as one, naming Accept-Encoding."""
    values = [v for n, v in headers if n.lower() == b"vary"]
    kept = [(n, v) for n, v in headers if n.lower() != b"vary"]
    kept.append((b"vary", merged_vary(values)))
    return kept


# content-encoding: only an identity one reaches a compressed head
_REPLACED = frozenset({b"content-length", b"accept-ranges", b"etag", b"content-encoding"})


def encoded_head(
    headers: Sequence[tuple[bytes, bytes]],
    coding: str,
    content_length: int | None,
    *,
    merge_vary: bool,
) -> list[tuple[bytes, bytes]]:
    """The head of the compressed response: Content-Encoding, the compressed
    ``content_length`` (None: left out), a weak ETag, no Accept-Ranges, and with
    ``merge_vary`` one Vary naming Accept-Encoding."""
    out = [(n, v) for n, v in headers if n.lower() not in _REPLACED]
    for name, value in headers:
        if name.lower() == b"etag":
            out.append((name, weak_etag(value)))
    out.append((b"content-encoding", coding.encode("ascii")))
    if content_length is not None:
        out.append((b"content-length", str(content_length).encode("ascii")))
    return with_vary(out) if merge_vary else out


def weakened(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with a strong ETag made weak (a 304 standing for a compressed 200
    validates it with the same ETag, RFC 9110 section 15.4.5)."""
    return [(n, weak_etag(v) if n.lower() == b"etag" else v) for n, v in headers]
