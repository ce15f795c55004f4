"""The CORS rules without sockets: origins as browsers serialise them, preflight answers,
the fields of actual requests, and properties of origin matching."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway._rules.cors import (
    MAX_ORIGIN_LENGTH,
    Allowed,
    CorsPolicy,
    Refused,
    parse_origin,
    parse_request_headers,
    preflight,
    preflight_request,
    request_origin,
    response_fields,
)

APP = "https://app.example"
CREDENTIALED = CorsPolicy(
    origins=frozenset({APP}),
    # no anchors: a pattern must match the whole origin anyway
    patterns=(re.compile(r"https://[a-z0-9-]+\.example"),),
    methods=("GET", "HEAD", "POST"),
    headers=("authorization", "content-type"),
    expose_headers=("X-Request-Id",),
    credentials=True,
    max_age_s=600,
)
WILDCARD = CorsPolicy(any_origin=True, methods=("GET", "HEAD"), expose_headers=("X-A", "X-B"))


# --- origins as configured ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "serialised"),
    [
        ("https://app.example", "https://app.example"),
        ("HTTPS://App.Example", "https://app.example"),
        ("https://app.example:443", "https://app.example"),  # the default port is left out
        ("http://app.example:80", "http://app.example"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://app.example:8443", "https://app.example:8443"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("http://[::1]", "http://[::1]"),
        ("capacitor://localhost", "capacitor://localhost"),
    ],
)
def test_a_configured_origin_is_compared_as_browsers_send_it(written: str, serialised: str) -> None:
    assert parse_origin(written) == serialised


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("https://app.example/", "no trailing slash: write https://app.example"),
        ("https://app.example/app", "no path: write https://app.example"),
        ("https://app.example?x=1", "no query: write https://app.example"),
        ("https://app.example#top", "no fragment: write https://app.example"),
        ("https://me:pw@app.example", "no user information: write https://app.example"),
        ("null", "sandboxed documents, file: pages"),
        ("app.example", "scheme://host[:port]"),
        ("https://*.example", "regex:^https://[a-z0-9-]+\\.example$"),
        ("https://app.example:99999", "not a port number"),
        ("https://app.example:", "not a port number"),
        ("https://bücher.example", "write https://xn--bcher-kva.example"),
        ("https://a b.example", "not a host name"),
        ("ftp://files.example", "browsers send no ftp:// origin: an origin is http:// or https://"),
        ("htps://app.example", "browsers send no htps:// origin"),
        ("wss://app.example", "browsers send no wss:// origin"),
    ],
)
def test_what_is_not_an_origin_says_what_to_write(written: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_origin(written)


# --- preflights --------------------------------------------------------------------------


def test_an_allowed_preflight_with_credentials_echoes_the_origin_and_says_vary() -> None:
    answer = preflight(CREDENTIALED, APP, "POST", ["authorization", "content-type"])
    assert isinstance(answer, Allowed)
    fields = dict(answer.fields)
    assert len(answer.fields) == len(fields)  # each field once
    assert fields == {
        b"access-control-allow-origin": APP.encode(),
        b"access-control-allow-credentials": b"true",
        b"access-control-allow-methods": b"GET, HEAD, POST",
        b"access-control-allow-headers": b"authorization, content-type",
        b"access-control-max-age": b"600",
        b"vary": b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }


def test_a_pattern_allows_the_origins_it_matches_whole() -> None:
    assert isinstance(preflight(CREDENTIALED, "https://shop.example", "GET", []), Allowed)
    refused = preflight(CREDENTIALED, "https://shop.example.evil", "GET", [])
    assert refused == Refused("origin", "this origin is not allowed to call the endpoint")


def test_a_wildcard_preflight_says_star_and_echoes_the_requested_headers() -> None:
    policy = CorsPolicy(any_origin=True, methods=("PUT",), headers=None)
    answer = preflight(policy, "https://anyone.example", "PUT", ["x-b", "authorization"])
    assert isinstance(answer, Allowed)
    fields = dict(answer.fields)
    assert fields[b"access-control-allow-origin"] == b"*"
    assert fields[b"access-control-allow-headers"] == b"x-b,authorization"
    assert b"access-control-allow-credentials" not in fields
    assert b"access-control-max-age" not in fields


def test_star_origins_with_credentials_still_echo_the_origin() -> None:
    """The config refuses the combination; the rules never send `*` with credentials."""
    policy = CorsPolicy(any_origin=True, methods=("GET",), credentials=True, headers=None)
    answer = preflight(policy, APP, "GET", ["x-a"])
    assert isinstance(answer, Allowed)
    assert dict(answer.fields)[b"access-control-allow-origin"] == APP.encode()
    assert response_fields(policy, APP)[0] == (b"access-control-allow-origin", APP.encode())


def test_a_method_not_allowed_is_refused_by_name() -> None:
    assert preflight(CREDENTIALED, APP, "DELETE", []) == Refused(
        "method", "method DELETE is not allowed from other origins"
    )
    # methods are case-sensitive (RFC 9110 section 9.1): fetch sends "patch" as written
    assert isinstance(preflight(CREDENTIALED, APP, "post", []), Refused)
    refused = preflight(CREDENTIALED, APP, "GE\tT", [])
    assert refused == Refused("method", "the requested method is not a valid method")


def test_headers_not_allowed_are_refused_by_name_and_compared_without_case() -> None:
    assert isinstance(preflight(CREDENTIALED, APP, "GET", ["Authorization"]), Refused)
    assert isinstance(preflight(CREDENTIALED, APP, "GET", ["authorization"]), Allowed)
    refused = preflight(CREDENTIALED, APP, "GET", ["authorization", "x-debug", "x-trace"])
    assert refused == Refused("headers", "request headers not allowed: x-debug, x-trace")


def test_an_echoed_header_must_be_a_field_name() -> None:
    policy = CorsPolicy(any_origin=True, methods=("GET",), headers=None)
    assert isinstance(preflight(policy, APP, "GET", ["x-a", "x b"]), Refused)


# --- actual requests ---------------------------------------------------------------------


def test_an_allowed_origin_gets_its_fields_and_another_none() -> None:
    assert response_fields(CREDENTIALED, APP) == (
        (b"access-control-allow-origin", APP.encode()),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"X-Request-Id"),
    )
    assert response_fields(CREDENTIALED, "https://evil.example.org") == ()
    assert CREDENTIALED.static_fields == ((b"vary", b"Origin"),)


def test_a_wildcard_policy_is_static() -> None:
    assert response_fields(WILDCARD, APP) == ()
    assert WILDCARD.static_fields == (
        (b"access-control-allow-origin", b"*"),
        (b"access-control-expose-headers", b"X-A, X-B"),
    )


def test_a_long_origin_never_reaches_a_pattern() -> None:
    calls: list[str] = []

    class Spy:
        def fullmatch(self, text: str) -> bool:
            calls.append(text)
            return True

    policy = CorsPolicy(patterns=(Spy(),), methods=("GET",))  # type: ignore[arg-type]
    assert policy.allows("https://a.example")
    assert not policy.allows("https://" + "a" * MAX_ORIGIN_LENGTH + ".example")
    assert calls == ["https://a.example"]


# --- reading the request -----------------------------------------------------------------


def test_a_preflight_needs_one_origin_and_one_requested_method() -> None:
    origin = (b"origin", APP.encode())
    method = (b"access-control-request-method", b"POST")
    asked = (b"access-control-request-headers", b"Content-Type, ,authorization")
    question = preflight_request([origin, method, asked])
    assert question is not None
    assert (question.origin, question.method, question.headers) == (
        APP,
        "POST",
        ("content-type", "authorization"),
    )
    assert preflight_request([origin]) is None
    assert preflight_request([method]) is None
    assert preflight_request([origin, origin, method]) is None
    assert preflight_request([origin, method, method]) is None


def test_the_origin_of_an_actual_request() -> None:
    assert request_origin([(b"accept", b"*/*"), (b"origin", b"https://a.example")]) == (
        "https://a.example"
    )
    assert request_origin([(b"accept", b"*/*")]) is None
    assert request_origin([(b"origin", b"https://a.example"), (b"origin", b"https://b")]) is None


def test_requested_header_names_are_split_trimmed_and_lower_cased() -> None:
    assert parse_request_headers(" X-A,x-b ,, Content-Type") == ["x-a", "x-b", "content-type"]
    assert parse_request_headers("") == []


# --- properties --------------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
HOST = st.lists(LABEL, min_size=1, max_size=3).map(".".join)
SCHEME = st.sampled_from(["http", "https"])
PORT = st.one_of(st.none(), st.integers(1, 65535))
# a request's field values as the gateway reads them: octets, decoded as latin-1
FIELD_TEXT = st.text(st.characters(max_codepoint=255), max_size=80)


def _origin(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


@given(SCHEME, HOST, PORT)
def test_parsing_an_origin_is_idempotent_and_ignores_case(
    scheme: str, host: str, port: int | None
) -> None:
    written = _origin(scheme, host, port)
    once = parse_origin(written)
    assert parse_origin(once) == once
    assert parse_origin(written.upper()) == once


@given(SCHEME, HOST, PORT, st.data())
def test_an_exact_list_never_matches_another_port_scheme_or_case(
    scheme: str, host: str, port: int | None, data: st.DataObject
) -> None:
    configured = parse_origin(_origin(scheme, host, port))
    policy = CorsPolicy(origins=frozenset({configured}), methods=("GET",))
    assert policy.allows(configured)
    other_scheme = "http" if scheme == "https" else "https"
    variants = [
        _origin(other_scheme, host, port),
        configured + "/",
        configured + ".",
        "https://x." + configured.split("://")[1],
    ]
    effective = port if port is not None else {"http": 80, "https": 443}[scheme]
    other_port = data.draw(st.integers(1, 65535).filter(lambda p: p != effective))
    variants.append(_origin(scheme, host, other_port))
    if any(c.isalpha() for c in host):
        i = next(i for i, c in enumerate(host) if c.isalpha())
        variants.append(_origin(scheme, host[:i] + host[i].upper() + host[i + 1 :], port))
    for variant in variants:
        assert not policy.allows(variant), variant
        assert response_fields(policy, variant) == ()
        assert isinstance(preflight(policy, variant, "GET", []), Refused)


ALLOWED_BY_PATTERN = LABEL.map(lambda label: f"https://{label}.example")


@given(
    st.one_of(
        HOST.filter(lambda h: not re.fullmatch(r"[a-z0-9-]+\.example", h)).map(
            lambda h: f"https://{h}"
        ),
        LABEL.map(lambda label: f"http://{label}.example"),  # another scheme
        st.tuples(LABEL, st.integers(1, 65535)).map(lambda t: f"https://{t[0]}.example:{t[1]}"),
        LABEL.map(lambda label: f"https://{label}.example.evil"),
        LABEL.map(lambda label: f"https://{label}example"),
        LABEL.map(lambda label: f"https://{label}.example/"),
        LABEL.map(lambda label: f"https://a.{label}.example"),
        FIELD_TEXT,
    )
)
def test_a_pattern_never_matches_an_origin_outside_the_set_it_describes(origin: str) -> None:
    inside = re.fullmatch(r"https://[a-z0-9-]+\.example", origin) is not None
    assert CREDENTIALED.allows(origin) == (inside or origin == APP)
    if not CREDENTIALED.allows(origin):
        assert response_fields(CREDENTIALED, origin) == ()
        answer = preflight(CREDENTIALED, origin, "GET", [])
        assert answer == Refused("origin", "this origin is not allowed to call the endpoint")


@given(ALLOWED_BY_PATTERN)
def test_a_pattern_matches_every_origin_of_its_set(origin: str) -> None:
    assert response_fields(CREDENTIALED, origin)[0] == (
        b"access-control-allow-origin",
        origin.encode(),
    )


@given(
    FIELD_TEXT,
    st.sampled_from(["GET", "POST", "DELETE", "get", ""]),
    st.lists(st.text(max_size=12), max_size=4),
    st.booleans(),
)
def test_a_preflight_answer_never_says_star_with_credentials_and_never_echoes_a_refused_origin(
    origin: str, method: str, headers: list[str], credentials: bool
) -> None:
    for policy in (
        CorsPolicy(any_origin=True, methods=("GET",), headers=None, credentials=credentials),
        CorsPolicy(origins=frozenset({APP}), methods=("GET", "POST"), credentials=credentials),
    ):
        answer = preflight(policy, origin, method, headers)
        if isinstance(answer, Refused):
            assert len(origin) < 4 or origin not in answer.message
            continue
        fields = dict(answer.fields)
        allow_origin = fields[b"access-control-allow-origin"]
        if credentials:
            assert allow_origin == origin.encode("latin-1")
            assert fields[b"access-control-allow-credentials"] == b"true"
        else:
            assert allow_origin in (b"*", origin.encode("latin-1"))
