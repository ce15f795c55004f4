"""The pure rules of response compression (gateway._rules.encoding) and the encoders
(gateway._compress): Accept-Encoding negotiation (RFC 9110 section 12.5.3), what may be
compressed, how the head changes, and that every encoder's output decodes to its input."""

from __future__ import annotations

import zlib

import brotli
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from gateway._compress import one_shot, stream_encoder
from gateway._rules.encoding import (
    CODINGS,
    DEFAULT_LEVELS,
    LEVEL_RANGES,
    THREAD_CUTOFF_BYTES,
    CompressionPolicy,
    TypePatterns,
    choose,
    encoded_head,
    may_compress,
    merged_vary,
    parse_accept_encoding,
    read_head,
    type_pattern_problem,
    unacceptable,
    weak_etag,
    weakened,
    with_vary,
)


def negotiate(value: str | None, supported: tuple[str, ...] = CODINGS) -> tuple[str | None, bool]:
    weights = None if value is None else parse_accept_encoding([value.encode("latin-1")])
    choice = choose(weights, supported)
    return choice.coding, choice.identity_ok


# --- negotiation ----------------------------------------------------------------------


def test_no_field_and_an_empty_field_mean_identity() -> None:
    assert negotiate(None) == (None, True)
    assert negotiate("") == (None, True)
    assert negotiate(" , ,") == (None, True)


def test_the_highest_weight_wins() -> None:
    assert negotiate("gzip;q=0.5, br;q=0.8, zstd;q=0.7") == ("br", True)
    assert negotiate("br;q=0.1, gzip") == ("gzip", True)
    assert negotiate("zstd;q=0.001") == ("zstd", True)


def test_equal_weights_go_to_the_first_configured_coding() -> None:
    assert negotiate("gzip, deflate, br, zstd") == ("br", True)  # a browser's field
    assert negotiate("gzip, zstd") == ("zstd", True)
    assert negotiate("gzip, br", ("gzip", "br")) == ("gzip", True)


def test_identity_only_when_no_supported_coding_is_acceptable() -> None:
    assert negotiate("identity") == (None, True)
    assert negotiate("deflate, compress") == (None, True)
    # the client prefers identity, but accepts gzip: the gateway compresses
    assert negotiate("identity;q=1, gzip;q=0.1") == ("gzip", True)


def test_the_wildcard_gives_its_weight_to_codings_not_listed() -> None:
    assert negotiate("*") == ("br", True)
    assert negotiate("gzip;q=0.5, *;q=0.4") == ("gzip", True)
    assert negotiate("gzip;q=0.3, *;q=0.4") == ("br", True)


def test_an_explicit_zero_excludes_a_coding_even_under_the_wildcard() -> None:
    assert negotiate("*, br;q=0") == ("zstd", True)
    assert negotiate("*, br;q=0, zstd;q=0, gzip;q=0") == (None, True)


def test_identity_excluded_with_nothing_else_acceptable_is_not_acceptable() -> None:
    for value in ("identity;q=0", "*;q=0", "deflate, identity;q=0", "br;q=0, identity;q=0"):
        coding, identity_ok = negotiate(value)
        assert coding is None and not identity_ok, value
    # identity listed beside *;q=0 keeps it acceptable
    assert negotiate("*;q=0, identity") == (None, True)


def test_identity_excluded_with_a_coding_acceptable_forces_compression() -> None:
    weights = parse_accept_encoding([b"gzip, identity;q=0"])
    choice = choose(weights, CODINGS)
    assert choice.coding == "gzip" and choice.forced
    assert not choose(parse_accept_encoding([b"gzip"]), CODINGS).forced


def test_codings_compare_case_insensitively_and_x_gzip_is_gzip() -> None:
    assert negotiate("GZIP") == ("gzip", True)
    assert negotiate("x-gzip") == ("gzip", True)
    assert negotiate("Br;Q=0.5, GZip;q=0.6") == ("gzip", True)
    assert parse_accept_encoding([b"x-gzip;q=0.5, gzip;q=0.9"]) == {"gzip": 0.5}


def test_malformed_members_are_ignored() -> None:
    assert parse_accept_encoding([b"br;q=2, gzip;q=abc, zstd;q=0.1234, b r, ;q=1"]) == {}
    assert parse_accept_encoding([b"gzip;q=, br;q=.5, zstd"]) == {"zstd": 1.0}
    # unknown parameters are ignored; the weight still counts
    assert parse_accept_encoding([b"gzip;level=9;q=0.5"]) == {"gzip": 0.5}
    # a malformed identity;q=0 does not exclude identity
    assert negotiate("identity;q=zero") == (None, True)


def test_field_lines_combine_and_a_coding_listed_twice_keeps_its_lowest_weight() -> None:
    assert parse_accept_encoding([b"gzip", b"br;q=0.5"]) == {"gzip": 1.0, "br": 0.5}
    assert parse_accept_encoding([b"gzip;q=0.8, gzip;q=0"]) == {"gzip": 0.0}


ALL_CODINGS = ("br", "zstd", "gzip", "x-gzip", "identity", "*", "deflate", "compress")
QVALUES = st.one_of(
    st.just(None),
    st.sampled_from(["0", "1", "0.5", "0.001", "0.999", "1.000", "0.0", "1.0"]),
    st.integers(0, 1000).map(lambda n: f"{n / 1000:.3f}".rstrip("0").rstrip(".") or "0"),
)


@st.composite
def accept_encoding(draw: st.DrawFn) -> tuple[str, list[tuple[str, float]]]:
    """A well-formed field value and its members (alias resolved, weight)."""
    members = draw(
        st.lists(st.tuples(st.sampled_from(ALL_CODINGS), QVALUES, st.booleans()), max_size=6)
    )
    parts = []
    expected = []
    for coding, q, upper in members:
        written = coding.upper() if upper else coding
        parts.append(written if q is None else f"{written} ; q={q}")
        expected.append(("gzip" if coding == "x-gzip" else coding, 1.0 if q is None else float(q)))
    separator = draw(st.sampled_from([",", ", ", " ,", ",,"]))
    return separator.join(parts), expected


@given(accept_encoding())
def test_parsing_a_well_formed_field_gives_each_codings_lowest_weight(
    case: tuple[str, list[tuple[str, float]]],
) -> None:
    value, members = case
    expected: dict[str, float] = {}
    for coding, q in members:
        expected[coding] = min(q, expected.get(coding, q))
    assert parse_accept_encoding([value.encode()]) == expected


@given(st.lists(st.binary(max_size=60), max_size=4))
def test_parsing_never_raises(values: list[bytes]) -> None:
    weights = parse_accept_encoding(values)
    assert all(0.0 <= q <= 1.0 for q in weights.values())


@given(
    accept_encoding(),
    st.permutations(CODINGS).flatmap(lambda p: st.integers(1, 3).map(lambda n: tuple(p[:n]))),
)
def test_the_chosen_coding_has_the_highest_weight_and_is_never_excluded(
    case: tuple[str, list[tuple[str, float]]], supported: tuple[str, ...]
) -> None:
    weights = parse_accept_encoding([case[0].encode()])
    choice = choose(weights, supported)
    star = weights.get("*")
    q = {c: weights.get(c, star if star is not None else 0.0) for c in supported}
    best = max(q.values())
    if best == 0 or not weights:
        assert choice.coding is None
    else:
        assert choice.coding is not None
        assert q[choice.coding] == best > 0
        # ties go to the configured order
        assert choice.coding == next(c for c in supported if q[c] == best)
    identity_q = weights.get("identity", star if star is not None else 1.0)
    assert choice.identity_ok == (identity_q > 0 or not weights)
    assert choice.acceptable == (choice.coding is not None or choice.identity_ok)


# --- what may be compressed -----------------------------------------------------------

POLICY = CompressionPolicy(CODINGS, (3, 3, 5), 1024, TypePatterns(["application/json", "text/*"]))


def head(*fields: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in fields]


def allowed(status: int, *fields: tuple[str, str], forced: bool = False) -> bool:
    return may_compress(status, read_head(head(*fields)), POLICY, forced)


def test_types_match_without_parameters_and_case_insensitively() -> None:
    patterns = TypePatterns(["application/json", "text/*"])
    assert patterns.matches(b"application/json")
    assert patterns.matches(b"Application/JSON; charset=utf-8")
    assert patterns.matches(b"text/event-stream")
    assert not patterns.matches(b"application/problem+json")
    assert not patterns.matches(b"image/png")
    assert not patterns.matches(b"textual/plain")
    assert not patterns.matches(None)
    assert TypePatterns(["*/*"]).matches(None)


def test_type_patterns_that_are_not_media_types_are_problems() -> None:
    assert type_pattern_problem("application/json") is None
    assert type_pattern_problem("text/*") is None
    assert type_pattern_problem("*/*") is None
    for bad in ("json", "application/", "*/json", "text/j*", "text/plain; charset=utf-8", "a b/c"):
        assert type_pattern_problem(bad) is not None, bad


@pytest.mark.parametrize("status", [100, 101, 204, 206, 304])
def test_responses_without_content_or_with_part_of_it_are_never_compressed(status: int) -> None:
    assert not allowed(status, ("Content-Type", "application/json"), forced=True)


@pytest.mark.parametrize(
    "field",
    [
        ("Content-Encoding", "gzip"),
        ("Content-Range", "bytes 0-9/100"),
        ("Cache-Control", "max-age=60, No-Transform"),
        ("Content-Digest", "sha-256=:abc=:"),
        ("Repr-Digest", "sha-256=:abc=:"),
    ],
)
def test_encoded_untransformable_or_digested_content_is_left_alone(
    field: tuple[str, str],
) -> None:
    assert not allowed(200, ("Content-Type", "application/json"), field, forced=True)
    assert allowed(200, ("Content-Type", "application/json"))


def test_an_identity_content_encoding_is_not_encoded_and_gives_way_to_the_coding() -> None:
    assert allowed(200, ("Content-Type", "application/json"), ("Content-Encoding", "Identity"))
    assert read_head(head(("Content-Encoding", "identity, gzip"))).codings == ("gzip",)
    original = head(("Content-Encoding", "identity"), ("Content-Type", "text/plain"))
    out = encoded_head(original, "br", 10, merge_vary=False)
    assert [v for n, v in out if n.lower() == b"content-encoding"] == [b"br"]


def refused(status: int, accept: str, *fields: tuple[str, str]) -> bool:
    """Whether a client excluding identity gets 406 instead of this response."""
    return unacceptable(status, read_head(head(*fields)), parse_accept_encoding([accept.encode()]))


def test_identity_excluded_and_a_body_left_alone_is_refused_unless_its_coding_is_accepted() -> None:
    never = "br, identity;q=0"
    assert refused(200, never, ("Cache-Control", "no-transform"))
    assert refused(206, never, ("Content-Range", "bytes 0-9/100"))
    assert refused(200, never, ("Repr-Digest", "sha-256=:abc=:"))
    assert refused(200, never, ("Content-Encoding", "gzip"))
    assert refused(200, "*, gzip;q=0, identity;q=0", ("Content-Encoding", "gzip"))
    assert refused(200, "gzip, identity;q=0", ("Content-Encoding", "gzip, br"))
    assert not refused(200, "x-gzip, identity;q=0", ("Content-Encoding", "GZIP"))
    assert not refused(200, "*, identity;q=0", ("Content-Encoding", "gzip"), ("Content-Range", "x"))
    assert not refused(200, "gzip, br, identity;q=0", ("Content-Encoding", "gzip, br"))
    assert not refused(200, never, ("Content-Type", "image/png"))  # compressed, not refused
    for status in (101, 204, 304):  # no content
        assert not refused(status, never, ("Cache-Control", "no-transform"))


def test_type_and_declared_size_decide_unless_identity_is_excluded() -> None:
    assert not allowed(200, ("Content-Type", "image/png"))
    assert allowed(200, ("Content-Type", "image/png"), forced=True)
    assert not allowed(200, ("Content-Type", "text/plain"), ("Content-Length", "1023"))
    assert allowed(200, ("Content-Type", "text/plain"), ("Content-Length", "1024"))
    assert allowed(200, ("Content-Type", "text/plain"), ("Content-Length", "3"), forced=True)
    assert allowed(200, ("Content-Type", "text/plain"))  # a stream: size unknown
    assert not allowed(200)  # no type
    assert allowed(502, ("Content-Type", "application/json"))  # errors too


# --- the head of a compressed response ------------------------------------------------


def test_strong_etags_become_weak_and_weak_ones_stay() -> None:
    assert weak_etag(b'"abc"') == b'W/"abc"'
    assert weak_etag(b'W/"abc"') == b'W/"abc"'
    assert weak_etag(b' "abc" ') == b'W/"abc"'
    assert weakened(head(("ETag", '"x"'), ("X-A", '"y"'))) == head(
        ("ETag", 'W/"x"'), ("X-A", '"y"')
    )


def test_vary_names_accept_encoding_once() -> None:
    assert merged_vary([]) == b"Accept-Encoding"
    assert merged_vary([b"Origin"]) == b"Origin, Accept-Encoding"
    assert merged_vary([b"origin, accept-encoding", b"Origin"]) == b"origin, accept-encoding"
    assert merged_vary([b"Origin", b"*"]) == b"*"
    merged = with_vary(head(("Vary", "Origin"), ("X-A", "1"), ("vary", "Cookie")))
    assert merged == [(b"X-A", b"1"), (b"vary", b"Origin, Cookie, Accept-Encoding")]


def test_the_encoded_head_names_the_coding_and_the_new_length() -> None:
    original = head(
        ("Content-Type", "application/json"),
        ("Content-Length", "5000"),
        ("ETag", '"v1"'),
        ("Accept-Ranges", "bytes"),
        ("Vary", "Origin"),
    )
    out = encoded_head(original, "br", 321, merge_vary=True)
    assert dict(out) == {
        b"Content-Type": b"application/json",
        b"ETag": b'W/"v1"',
        b"content-encoding": b"br",
        b"content-length": b"321",
        b"vary": b"Origin, Accept-Encoding",
    }
    streamed = dict(encoded_head(original, "gzip", None, merge_vary=False))
    assert b"content-length" not in streamed and streamed[b"Vary"] == b"Origin"


def test_every_level_a_config_may_set_has_a_thread_cut_off() -> None:
    for coding, (low, high) in LEVEL_RANGES.items():
        assert set(THREAD_CUTOFF_BYTES[coding]) == set(range(low, high + 1))
        assert low <= DEFAULT_LEVELS[coding] <= high
        cutoffs = [THREAD_CUTOFF_BYTES[coding][level] for level in range(low, high + 1)]
        assert cutoffs == sorted(cutoffs, reverse=True)  # a higher level is never cheaper


# --- the encoders ---------------------------------------------------------------------

DECODE = {
    "br": brotli.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
    "gzip": lambda data: zlib.decompress(data, 31),
}


@given(st.sampled_from(CODINGS), st.binary(max_size=5000))
def test_a_whole_body_decodes_to_itself(coding: str, body: bytes) -> None:
    assert DECODE[coding](one_shot(coding, DEFAULT_LEVELS[coding], body)) == body


@given(st.sampled_from(CODINGS), st.lists(st.binary(max_size=2000), max_size=5))
def test_every_flushed_chunk_decodes_at_once_and_the_stream_decodes_whole(
    coding: str, chunks: list[bytes]
) -> None:
    encoder = stream_encoder(coding, DEFAULT_LEVELS[coding])
    if coding == "br":
        decoder = brotli.Decompressor()
        decode = decoder.process
    elif coding == "zstd":
        decode = zstandard.ZstdDecompressor().decompressobj().decompress
    else:
        decode = zlib.decompressobj(31).decompress
    for chunk in chunks:
        # flushed: the client can decode all of a chunk as soon as it has it
        assert decode(encoder.chunk(chunk)) == chunk
    assert decode(encoder.finish(b"tail")) == b"tail"
    whole = stream_encoder(coding, DEFAULT_LEVELS[coding])
    stream = b"".join(whole.chunk(chunk) for chunk in chunks) + whole.finish()
    assert DECODE[coding](stream) == b"".join(chunks)
