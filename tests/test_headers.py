"""Which headers cross the gateway (gateway._rules.headers)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._observability.tracing import trace_context
from gateway._rules import headers
from gateway._rules.forwarded import believed_client, client_info, parse_networks
from gateway._rules.headers import HOP_BY_HOP, connection_named, select_headers, strip_hop_by_hop


def test_strip_hop_by_hop_drops_every_hop_by_hop_field() -> None:
    headers = [(name, b"x") for name in sorted(HOP_BY_HOP)] + [(b"content-type", b"a/b")]
    assert strip_hop_by_hop(headers) == [(b"content-type", b"a/b")]


def test_strip_hop_by_hop_is_case_insensitive() -> None:
    headers = [(b"Transfer-Encoding", b"chunked"), (b"KEEP-ALIVE", b"5"), (b"ETag", b'"1"')]
    assert strip_hop_by_hop(headers) == [(b"ETag", b'"1"')]


def test_strip_hop_by_hop_drops_fields_named_by_connection() -> None:
    headers = [
        (b"Connection", b"close, X-Secret , x-other"),
        (b"X-Secret", b"1"),
        (b"X-Other", b"2"),
        (b"X-Kept", b"3"),
    ]
    assert strip_hop_by_hop(headers) == [(b"X-Kept", b"3")]


def test_strip_hop_by_hop_drops_fields_named_by_any_connection_header() -> None:
    headers = [(b"connection", b"x-a"), (b"connection", b"x-b"), (b"x-a", b"1"), (b"x-b", b"2")]
    assert strip_hop_by_hop(headers) == []


def test_strip_hop_by_hop_drops_also_fields() -> None:
    headers = [(b"Content-Length", b"3"), (b"Date", b"today")]
    assert strip_hop_by_hop(headers, also=frozenset({b"content-length"})) == [(b"Date", b"today")]


def test_strip_hop_by_hop_keeps_order_and_repeated_fields() -> None:
    headers = [(b"set-cookie", b"a=1"), (b"te", b"trailers"), (b"set-cookie", b"b=2")]
    assert strip_hop_by_hop(headers) == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


def test_connection_named_lowercases_and_ignores_empty_tokens() -> None:
    named = connection_named([(b"Connection", b" Keep-Alive,, X-Foo ,")])
    assert named == frozenset({b"keep-alive", b"x-foo"})


def test_select_headers_forwards_only_listed_names() -> None:
    headers = [(b"Accept-Language", b"fr"), (b"Cookie", b"s=1"), (b"Authorization", b"t")]
    wanted = frozenset({b"accept-language"})
    assert select_headers(headers, wanted) == [(b"Accept-Language", b"fr")]


def test_select_headers_with_nothing_listed_forwards_nothing() -> None:
    assert select_headers([(b"accept", b"*/*")], frozenset()) == []


def test_select_headers_never_forwards_hop_by_hop_even_if_listed() -> None:
    headers = [(b"TE", b"trailers"), (b"Upgrade", b"h2c"), (b"Accept", b"*/*")]
    wanted = frozenset({b"te", b"upgrade", b"accept"})
    assert select_headers(headers, wanted) == [(b"Accept", b"*/*")]


def test_select_headers_never_forwards_a_connection_named_field() -> None:
    headers = [(b"Connection", b"Accept-Language"), (b"Accept-Language", b"fr")]
    assert select_headers(headers, frozenset({b"accept-language"})) == []


def test_select_headers_accepts_an_iterator() -> None:
    headers = iter([(b"Connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2")])
    assert select_headers(headers, frozenset({b"x-a", b"x-b"})) == [(b"x-b", b"2")]


# --- properties ------------------------------------------------------------------------------

_NAMES = st.sampled_from(
    [
        b"connection",
        b"Connection",
        b"keep-alive",
        b"Proxy-Connection",
        b"TE",
        b"trailer",
        b"Transfer-Encoding",
        b"upgrade",
        b"accept",
        b"Accept-Language",
        b"x-a",
        b"X-B",
        b"cookie",
    ]
)
_VALUES = st.lists(
    st.sampled_from([b"close", b"x-a", b"X-B", b"accept", b"keep-alive", b"", b" "]), max_size=3
).map(b", ".join)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=10)
_WANTED = st.frozensets(_NAMES.map(bytes.lower), max_size=6)


@settings(max_examples=200, deadline=None)
@given(_HEADERS, _WANTED)
def test_select_headers_forwards_exactly_the_listed_end_to_end_fields(
    headers: list[tuple[bytes, bytes]], wanted: frozenset[bytes]
) -> None:
    named = connection_named(headers)
    expected = [
        (n, v)
        for n, v in headers
        if n.lower() in wanted and n.lower() not in HOP_BY_HOP and n.lower() not in named
    ]
    out = select_headers(headers, wanted)
    assert out == expected
    for name, _ in out:
        assert name.lower() not in HOP_BY_HOP


@settings(max_examples=200, deadline=None)
@given(_HEADERS)
def test_strip_hop_by_hop_never_leaves_a_hop_by_hop_or_connection_named_field(
    headers: list[tuple[bytes, bytes]],
) -> None:
    named = connection_named(headers)
    out = strip_hop_by_hop(headers)
    assert all(n.lower() not in HOP_BY_HOP and n.lower() not in named for n, _ in out)
    assert [h for h in headers if h in out] == out


HEADER_SETS = {
    "HOP_BY_HOP": headers.HOP_BY_HOP,
    "FRAMING": headers.FRAMING,
    "GATEWAY_SET": headers.GATEWAY_SET,
    "NEVER_FORWARDED": headers.NEVER_FORWARDED,
    "NOT_CACHE_KEYED": headers.NOT_CACHE_KEYED,
    "NOT_PASSED_BACK": headers.NOT_PASSED_BACK,
    "NEVER_RETURNED": headers.NEVER_RETURNED,
}


def test_every_header_set_holds_lower_case_bytes_names() -> None:
    for name, names in HEADER_SETS.items():
        assert names, name
        assert all(isinstance(n, bytes) and n == n.lower() for n in names), name


def test_never_forwarded_is_hop_by_hop_framing_and_the_gateways_own() -> None:
    assert headers.NEVER_FORWARDED == headers.HOP_BY_HOP | headers.FRAMING | headers.GATEWAY_SET


def test_the_str_views_name_the_same_fields() -> None:
    assert {n.encode() for n in headers.NEVER_FORWARDED_STR} == headers.NEVER_FORWARDED
    assert {n.encode() for n in headers.NEVER_RETURNED_STR} == headers.NEVER_RETURNED


def test_nothing_the_gateway_sets_per_request_is_cache_keyed_but_what_the_client_chose() -> None:
    """The client's address and trace ids would make every entry private to one request;
    the forwarded Host and scheme come from the client and are keyed (an unkeyed
    X-Forwarded-Host lets one client poison another's answer)."""
    assert headers.GATEWAY_SET - headers.KEYED_FORWARDING <= headers.NOT_CACHE_KEYED
    assert not headers.KEYED_FORWARDING & headers.NOT_CACHE_KEYED
    assert {b"host", b"content-length"} <= headers.NOT_CACHE_KEYED


def test_gateway_set_names_every_field_the_gateway_adds_to_an_upstream_call() -> None:
    info = client_info(
        "10.0.0.1", "http", [(b"host", b"example.com")], parse_networks(["10.0.0.0/8"])
    )
    trace = trace_context(
        [(b"tracestate", b"k=v"), (b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    )
    added = {name for name, _ in info.headers} | {name for name, _ in trace.child_headers()}
    assert b"tracestate" in added
    assert added <= headers.GATEWAY_SET


_ADDRESSES = st.sampled_from(
    ["10.0.0.1", "10.0.0.2", "10.9.9.9", "203.0.113.7", "198.51.100.1", "::1", "garbage", ""]
)


@given(
    peer=st.one_of(st.none(), _ADDRESSES),
    fields=st.lists(st.lists(_ADDRESSES, max_size=4).map(", ".join), max_size=3),
    trusted=st.lists(st.sampled_from(["10.0.0.0/8", "::1", "198.51.100.0/24"]), max_size=2),
)
def test_the_believed_client_is_the_one_client_info_forwards(
    peer: str | None, fields: list[str], trusted: list[str]
) -> None:
    """The access log's client (every request) and the forwarded one (backend calls)
    are one decision."""
    request_headers = [(b"x-forwarded-for", f.encode()) for f in fields]
    networks = parse_networks(trusted)
    assert (
        believed_client(peer, request_headers, networks)
        == client_info(peer, "http", request_headers, networks).address
    )
