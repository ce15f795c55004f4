"""Routes, path parameters, upstream URL templates and base URLs (gateway._rules.urls)."""

from __future__ import annotations

import contextlib
import string
from urllib.parse import quote, quote_from_bytes, unquote, unquote_to_bytes, urlsplit

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway._call.request import upstream_request
from gateway._errors import InvalidPathParameter, MethodNotAllowed, NotFound
from gateway._rules.template import (
    Template,
    UnresolvedReference,
    parse_url_template,
    render,
    url_value,
)
from gateway._rules.urls import (
    Router,
    TemplateError,
    decode_param,
    encode_query,
    encode_value,
    parse_base_url,
    parse_query,
    parse_route,
)

# --- parse_route ----------------------------------------------------------------------


def _render(template: Template, params: dict[str, str], extra_query: str = "") -> str:
    """Fill path parameters as the fan-out does, then append a forwarded query."""
    out = render(template, lambda ref: params[ref.name], url_value)
    if extra_query:
        out += ("&" if template.has_query else "?") + extra_query
    return out


def _names(template: Template) -> tuple[str, ...]:
    return tuple(ref.name for ref in template.refs)


def test_route_splits_literal_and_parameter_segments() -> None:
    route = parse_route("/api/users/{user_id}/dashboard")
    assert route.segments == ("api", "users", "{user_id}", "dashboard")
    assert route.params == (None, None, "user_id", None)
    assert route.param_names == ("user_id",)
    assert route.literal_count == 3


def test_root_route_has_one_empty_segment() -> None:
    route = parse_route("/")
    assert route.segments == ("",)
    assert route.param_names == ()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("api/users", "start with '/'"),
        ("/a?x=1", "query or fragment"),
        ("/a#top", "query or fragment"),
        ("/a/{x}/{x}", "appears twice"),
        ("/a/pre{x}", "whole segment"),
        ("/a/{x}post", "whole segment"),
        ("/a/{x", "whole segment"),
        ("/a/x}", "whole segment"),
        ("/a/{1x}", "whole segment"),
        ("/a b", "not allowed in a path"),
        ("/caf\u00e9", "not allowed in a path"),
        ('/a"b', "not allowed in a path"),
    ],
)
def test_malformed_route_is_rejected(text: str, fragment: str) -> None:
    with pytest.raises(TemplateError, match=fragment):
        parse_route(text)


# --- decode_param -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("42", "42"),
        ("alice", "alice"),
        ("a%20b", "a b"),
        ("caf%C3%A9", "caf\u00e9"),
        ("%E6%97%A5%E6%9C%AC", "\u65e5\u672c"),
        ("%F0%9F%98%80", "\U0001f600"),
        ("...", "..."),
        (".a", ".a"),
        ("a%25b", "a%b"),
        ("%7e", "~"),
        ("a+b", "a+b"),
    ],
)
def test_decode_param_accepts_and_decodes_safe_values(raw: str, value: str) -> None:
    assert decode_param(raw) == value


@pytest.mark.parametrize(
    "raw",
    ["", ".", "..", "%2E", "%2e%2E", "%2E."],
    ids=["empty", "dot", "dotdot", "encoded-dot", "encoded-dotdot", "mixed-dotdot"],
)
def test_decode_param_rejects_empty_and_dot_segments(raw: str) -> None:
    with pytest.raises(InvalidPathParameter, match="not allowed"):
        decode_param(raw)


@pytest.mark.parametrize("raw", ["a%2Fb", "a%2fb", "%2F"])
def test_decode_param_rejects_encoded_slash(raw: str) -> None:
    with pytest.raises(InvalidPathParameter, match="'/'"):
        decode_param(raw)


@pytest.mark.parametrize("raw", ["a%5Cb", "%5c..", "..%5C", "%5C"])
def test_decode_param_rejects_backslash(raw: str) -> None:
    """Some upstream servers take a backslash for a slash."""
    with pytest.raises(InvalidPathParameter, match="a backslash is not allowed"):
        decode_param(raw)


@pytest.mark.parametrize(
    ("raw", "value", "encoded"),
    [
        ("a%3Fb", "a?b", "a%3Fb"),
        ("a%23b", "a#b", "a%23b"),
        ("jane_doe%23EXT%23%40corp.example", "jane_doe#EXT#@corp.example", None),
        ("%3F", "?", "%3F"),
        ("%23", "#", "%23"),
    ],
)
def test_decode_param_accepts_question_mark_and_hash_and_encodes_them_back(
    raw: str, value: str, encoded: str | None
) -> None:
    # encoded whole, "?" and "#" stay data: they cannot start a query or a fragment
    assert decode_param(raw) == value
    assert encode_value(value) == (encoded or raw)


@pytest.mark.parametrize("raw", ["a%00b", "%0A", "%0d%0a", "%09", "%1F", "%7F", "a\x01b"])
def test_decode_param_rejects_control_characters(raw: str) -> None:
    with pytest.raises(InvalidPathParameter, match="control"):
        decode_param(raw)


@pytest.mark.parametrize("raw", ["%zz", "%", "a%", "%4", "%4g", "100%"])
def test_decode_param_rejects_malformed_percent_encoding(raw: str) -> None:
    with pytest.raises(InvalidPathParameter, match="malformed"):
        decode_param(raw)


@pytest.mark.parametrize("raw", ["%FF", "%C3", "%C3%28", "%ED%A0%80", "%E9t%E9", "a%80b"])
def test_decode_param_keeps_octets_that_are_not_utf8_exactly(raw: str) -> None:
    # percent-encoding stands for octets (RFC 3986 section 2.1): they go back as they came
    assert encode_value(decode_param(raw)) == raw


def test_invalid_path_parameter_is_a_400_with_a_stable_code() -> None:
    with pytest.raises(InvalidPathParameter) as info:
        decode_param("%2F")
    assert info.value.status == 400
    assert info.value.code == "invalid_path_parameter"


# --- Router ---------------------------------------------------------------------------------


def _router(*routes: tuple[str, str, str]) -> Router[str]:
    return Router((parse_route(path), method, target) for path, method, target in routes)


def test_router_matches_a_parameter_and_decodes_it() -> None:
    router = _router(("/api/users/{user_id}/dashboard", "GET", "dash"))
    match = router.match("/api/users/caf%C3%A9/dashboard", "GET")
    assert match.target == "dash"
    assert match.params == {"user_id": "caf\u00e9"}


def test_router_prefers_literal_segment_over_parameter() -> None:
    router = _router(("/users/{id}", "GET", "by-id"), ("/users/me", "GET", "me"))
    assert router.match("/users/me", "GET").target == "me"
    assert router.match("/users/42", "GET").target == "by-id"


def test_router_prefers_more_literal_segments_whatever_the_config_order() -> None:
    router = _router(
        ("/{a}/{b}", "GET", "none"),
        ("/x/{b}", "GET", "one"),
        ("/x/y", "GET", "two"),
    )
    assert router.match("/x/y", "GET").target == "two"
    assert router.match("/x/z", "GET").target == "one"
    assert router.match("/w/z", "GET").target == "none"


def test_router_uses_config_order_between_equally_literal_routes() -> None:
    router = _router(("/{a}/x", "GET", "first"), ("/y/{b}", "GET", "second"))
    assert router.match("/y/x", "GET").target == "first"


def test_router_literal_match_is_exact_and_case_sensitive() -> None:
    router = _router(("/users/me", "GET", "me"))
    with pytest.raises(NotFound):
        router.match("/users/Me", "GET")


@pytest.mark.parametrize("path", ["/nope", "/users", "/users/1/extra", "/users/1/", "", "users/1"])
def test_router_raises_not_found_for_unknown_paths(path: str) -> None:
    router = _router(("/users/{id}", "GET", "user"))
    with pytest.raises(NotFound) as info:
        router.match(path, "GET")
    assert info.value.status == 404
    assert info.value.code == "not_found"


def test_router_raises_method_not_allowed_with_allow_list() -> None:
    router = _router(("/users/{id}", "GET", "get"), ("/users/{id}", "PUT", "put"))
    with pytest.raises(MethodNotAllowed) as info:
        router.match("/users/1", "DELETE")
    assert info.value.status == 405
    assert info.value.code == "method_not_allowed"
    assert info.value.allow == ("GET", "HEAD", "PUT")  # a GET route serves HEAD


def test_router_allow_list_has_head_only_where_get_or_head_is_routed() -> None:
    router = _router(("/a", "POST", "post"), ("/b", "HEAD", "head"))
    with pytest.raises(MethodNotAllowed) as info:
        router.match("/a", "PUT")
    assert info.value.allow == ("POST",)
    with pytest.raises(MethodNotAllowed) as info:
        router.match("/b", "GET")
    assert info.value.allow == ("HEAD",)


def test_router_dispatches_by_method_on_the_same_path() -> None:
    router = _router(("/users/{id}", "GET", "get"), ("/users/{id}", "PUT", "put"))
    assert router.match("/users/1", "GET").target == "get"
    assert router.match("/users/1", "PUT").target == "put"


def test_router_head_falls_back_to_get() -> None:
    router = _router(("/users/{id}", "GET", "get"))
    assert router.match("/users/1", "HEAD").target == "get"


def test_router_prefers_an_explicit_head_route_over_get() -> None:
    router = _router(("/users/{id}", "GET", "get"), ("/users/{id}", "HEAD", "head"))
    assert router.match("/users/1", "HEAD").target == "head"


def test_router_head_without_get_is_method_not_allowed() -> None:
    router = _router(("/users/{id}", "POST", "post"))
    with pytest.raises(MethodNotAllowed) as info:
        router.match("/users/1", "HEAD")
    assert info.value.allow == ("POST",)


def test_router_encoded_slash_in_parameter_is_invalid_not_not_found() -> None:
    router = _router(("/files/{name}", "GET", "file"), ("/files/{a}/{b}", "GET", "two"))
    with pytest.raises(InvalidPathParameter) as info:
        router.match("/files/a%2Fb", "GET")
    assert "'name'" in info.value.message


def test_router_empty_parameter_segment_is_invalid_not_not_found() -> None:
    router = _router(("/users/{id}/dashboard", "GET", "dash"))
    with pytest.raises(InvalidPathParameter):
        router.match("/users//dashboard", "GET")


@pytest.mark.parametrize("segment", [".", "..", "%2E%2E", "%zz", "%2F", "%00", "%0A", "%C2%85"])
def test_router_rejects_unsafe_parameter_values(segment: str) -> None:
    router = _router(("/users/{id}", "GET", "user"))
    with pytest.raises(InvalidPathParameter):
        router.match(f"/users/{segment}", "GET")


def test_router_checks_method_before_parameter_values() -> None:
    router = _router(("/users/{id}", "GET", "user"))
    with pytest.raises(MethodNotAllowed):
        router.match("/users/%2F", "POST")


def test_router_finds_the_method_on_a_route_with_a_differently_named_parameter() -> None:
    # GET /a/{x} and POST /a/{y} are distinct routes (compile_config accepts both); a POST
    # must not stop at the GET route with a 405.
    router = _router(("/a/{x}", "GET", "get"), ("/a/{y}", "POST", "post"))
    assert router.match("/a/1", "POST").target == "post"


def test_router_finds_the_method_on_a_less_literal_route() -> None:
    # GET /users/me and DELETE /users/{id}: a DELETE of /users/me has a route, so no 405.
    router = _router(("/users/me", "GET", "me"), ("/users/{id}", "DELETE", "delete"))
    assert router.match("/users/me", "DELETE").target == "delete"


# --- URL templates ---------------------------------------------------------------------


def test_template_with_query_renders_parameter_in_the_query() -> None:
    template = parse_url_template("/orders?user={user_id}&limit=5")
    assert _names(template) == ("user_id",)
    assert template.has_query
    assert _render(template, {"user_id": "42"}) == "/orders?user=42&limit=5"


def test_template_with_query_appends_extra_query_with_ampersand() -> None:
    template = parse_url_template("/orders?user={user_id}&limit=5")
    assert _render(template, {"user_id": "42"}, "lang=en") == "/orders?user=42&limit=5&lang=en"


def test_template_without_query_appends_extra_query_with_question_mark() -> None:
    template = parse_url_template("/users/{id}")
    assert not template.has_query
    assert _render(template, {"id": "1"}, "lang=en") == "/users/1?lang=en"


def test_template_without_extra_query_adds_no_separator() -> None:
    assert _render(parse_url_template("/users/{id}"), {"id": "1"}, "") == "/users/1"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a b", "a%20b"),
        ("x&admin=1", "x%26admin%3D1"),
        ("caf\u00e9", "caf%C3%A9"),
        ("50%", "50%25"),
        ("a+b", "a%2Bb"),
        ("-._~", "-._~"),
        ("@:;", "%40%3A%3B"),
    ],
)
def test_template_percent_encodes_parameter_values_whole(value: str, encoded: str) -> None:
    template = parse_url_template("/orders?user={user_id}&limit=5")
    assert _render(template, {"user_id": value}) == f"/orders?user={encoded}&limit=5"


@pytest.mark.parametrize("value", ["a/b", "/", "..", ".", "", "a\nb"])
def test_template_refuses_values_that_would_change_the_url_structure(value: str) -> None:
    with pytest.raises(UnresolvedReference):
        _render(parse_url_template("/users/{id}"), {"id": value})


def test_template_renders_several_parameters() -> None:
    template = parse_url_template("/u/{a}/o/{b}")
    assert _names(template) == ("a", "b")
    assert _render(template, {"a": "1", "b": "x y"}) == "/u/1/o/x%20y"


@pytest.mark.parametrize(
    "text", ["/a", "/users/{id}", "/a?b=1&c={x}", "/a/%20b", "/a;v=1", "/a/~b", "/a:b@c"]
)
def test_valid_templates_parse(text: str) -> None:
    assert parse_url_template(text).text == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("users/{id}", "start with '/'"),
        ("/a#frag", "fragment"),
        ("/a/{id", "unbalanced"),
        ("/a/id}", "unbalanced"),
        ("/a/{1x}", "not a valid name"),
        ("/a/{}", "empty reference"),
        ("/a b", "percent-encoded"),
        ('/a"b', "percent-encoded"),
        ("/caf\u00e9", "percent-encoded"),
        ("/a\nb", "percent-encoded"),
    ],
)
def test_malformed_template_is_rejected(text: str, fragment: str) -> None:
    with pytest.raises(TemplateError, match=fragment):
        parse_url_template(text)


def test_encode_query_percent_encodes_reserved_characters() -> None:
    assert encode_query([("lang", "en"), ("q", "a b&c=d/e")]) == "lang=en&q=a%20b%26c%3Dd%2Fe"


# --- base URLs ------------------------------------------------------------------------------


def test_base_url_http_defaults_to_port_80() -> None:
    base = parse_base_url("http://example.com")
    assert (base.scheme, base.host, base.port, base.base_path) == ("http", "example.com", 80, "")
    assert base.origin == "http://example.com:80"


def test_base_url_https_defaults_to_port_443() -> None:
    base = parse_base_url("https://example.com")
    assert base.port == 443
    assert base.origin == "https://example.com:443"


def test_base_url_keeps_an_explicit_port() -> None:
    base = parse_base_url("http://127.0.0.1:9001")
    assert base.port == 9001
    assert base.join("/users/1") == "http://127.0.0.1:9001/users/1"


def test_base_url_joins_the_base_path_without_doubling_slashes() -> None:
    base = parse_base_url("http://127.0.0.1:9001/base/")
    assert base.base_path == "/base"
    assert base.join("/users/1?x=1") == "http://127.0.0.1:9001/base/users/1?x=1"


def test_base_url_with_ipv6_host_brackets_the_origin() -> None:
    base = parse_base_url("http://[::1]:9001/v1")
    assert base.host == "::1"
    assert base.join("/x") == "http://[::1]:9001/v1/x"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ftp://example.com", "http or https"),
        ("example.com", "http or https"),
        ("//example.com", "http or https"),
        ("http://", "no host"),
        ("http:///path", "no host"),
        ("http://user:pw@example.com", "credentials"),
        ("http://user@example.com", "credentials"),
        ("http://example.com/?a=1", "query or fragment"),
        ("http://example.com?", "query or fragment"),
        ("http://example.com/#top", "query or fragment"),
        ("http://example.com#", "query or fragment"),
        ("http://example.com:99999", "invalid URL"),
        ("http://example.com:abc", "invalid URL"),
        ("http://example.com/a b", "percent-encoded"),
        ("http://example.com/{x}", "percent-encoded"),
    ],
)
def test_bad_base_url_is_rejected(text: str, fragment: str) -> None:
    with pytest.raises(TemplateError, match=fragment):
        parse_base_url(text)


# --- properties -----------------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
_BASE = parse_base_url("http://127.0.0.1:9001/base")
_TEMPLATE = parse_url_template("/users/{id}/x")


def _accepted(raw: str) -> str | None:
    try:
        return decode_param(raw)
    except InvalidPathParameter:
        return None


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_any_accepted_value_stays_in_its_upstream_path_segment(text: str) -> None:
    value = _accepted(quote(text, safe=""))
    assume(value is not None)
    assert value is not None
    url = httpx.URL(_BASE.join(_render(_TEMPLATE, {"id": value})))
    assert url.scheme == "http"
    assert url.host == "127.0.0.1"
    assert url.port == 9001
    assert url.query == b""
    assert url.fragment == ""
    raw_path = url.raw_path.decode("ascii")
    assert raw_path.startswith("/base/users/")
    assert raw_path.endswith("/x")
    segment = raw_path[len("/base/users/") : -len("/x")]
    assert "/" not in segment
    assert unquote(segment) == value


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_decode_param_accepts_exactly_what_it_round_trips(text: str) -> None:
    try:
        value = decode_param(quote(text, safe=""))
    except InvalidPathParameter:
        return
    assert value == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_param_only_raises_invalid_path_parameter_on_encoded_text(text: str) -> None:
    # lone surrogates cannot be UTF-8 encoded (by a client either)
    assume(not any("\ud800" <= c <= "\udfff" for c in text))
    raw = quote(text, safe="")
    with contextlib.suppress(InvalidPathParameter):
        decode_param(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_characters="/"), max_size=30),
        st.text(alphabet=string.printable.replace("/", ""), max_size=30),
        st.text(alphabet="%0123456789abcdefABCDEFzZ.?#", max_size=12),
    )
)
def test_decode_param_only_raises_invalid_path_parameter_on_raw_text(raw: str) -> None:
    with contextlib.suppress(InvalidPathParameter):
        decode_param(raw)


@pytest.mark.parametrize("raw", ["a%C2%85b", "%C2%9F", "x%C2%80"])
def test_c1_control_characters_are_refused(raw: str) -> None:
    with pytest.raises(InvalidPathParameter, match="control"):
        decode_param(raw)


# --- any octets, from the client request to the upstream URL ---------------------------

_ROUTER = _router(("/api/users/{id}", "GET", "user"))
_Q_TEMPLATE = parse_url_template("/users/{id}/photo?size=1&q={query.q}")
# how a client may write octets: every one encoded, or sub-delimiters and ":@" left raw
_SAFE_AS_WRITTEN = st.sampled_from(["", "!$&'()*+,;=:@"])


def _unsafe(value: bytes) -> bool:
    text = value.decode("utf-8", "surrogateescape")
    return (
        text in ("", ".", "..")
        or "/" in text
        or "\\" in text
        or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=24), st.binary(max_size=24), _SAFE_AS_WRITTEN)
def test_no_accepted_value_reaches_another_upstream_path_or_changes_the_query(
    segment: bytes, q: bytes, safe: str
) -> None:
    raw_segment = quote_from_bytes(segment, safe=safe.replace("&", ""))
    try:
        match = _ROUTER.match("/api/users/" + raw_segment, "GET")
    except InvalidPathParameter:
        assert _unsafe(segment)  # refused only for what could change the URL's structure
        return
    assert not _unsafe(segment)
    pairs = parse_query(b"q=" + quote_from_bytes(q, safe="").encode("ascii"))
    query = {"q": pairs[0].value}
    try:
        path = render(_Q_TEMPLATE, lambda ref: {**match.params, **query}[ref.name], url_value)
    except UnresolvedReference:
        assert _unsafe(q)
        return
    assert not _unsafe(q)
    target = upstream_request("GET", _BASE, _BASE.base_path + path, []).target
    parts = urlsplit(target)
    segments = parts.path.split("/")
    # exactly the template's segments, the value in its own, octet for octet
    assert segments[:3] == ["", "base", "users"] and segments[4:] == ["photo"]
    assert unquote_to_bytes(segments[3]) == segment
    assert not parts.fragment and "#" not in target
    names = [pair.partition("=")[0] for pair in parts.query.split("&")]
    assert names == ["size", "q"]  # no value adds a pair or ends the query
    assert unquote_to_bytes(parts.query.partition("&q=")[2]) == q
