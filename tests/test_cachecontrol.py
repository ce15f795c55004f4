"""What a shared cache may store (RFC 9111), and the keys it stores responses under."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway._rules.cachecontrol import (
    MAX_DELTA_SECONDS,
    Freshness,
    cache_key,
    parse_cache_control,
    shared_freshness,
    shared_store_refusal,
)

NOW = 1_800_000_000.0


def http_date(epoch_s: float) -> bytes:
    return formatdate(epoch_s, usegmt=True).encode("ascii")


def freshness(
    cache_control: str,
    *extra: tuple[bytes, bytes],
    status: int = 200,
    key_headers: frozenset[bytes] = frozenset(),
    request_authorized: bool = False,
) -> Freshness:
    headers = [(b"Cache-Control", cache_control.encode("latin-1")), *extra]
    return shared_freshness(
        status,
        headers,
        now_s=NOW,
        key_headers=key_headers,
        request_authorized=request_authorized,
    )


def test_directives_parse_case_insensitively_with_quoted_arguments() -> None:
    assert parse_cache_control(['Max-Age=60, s-maxage="30"', "public,, "]) == {
        "max-age": "60",
        "s-maxage": "30",
        "public": None,
    }
    assert parse_cache_control(['private="Set-Cookie, X-A\\"b"']) == {
        "private": 'Set-Cookie, X-A"b'
    }


@pytest.mark.parametrize(
    "value",
    ["max-age=60 public", "max-age = 60", 'x="unterminated', "=60", "max-age=", "a;b", 'x="\x01"'],
)
def test_a_malformed_field_does_not_parse(value: str) -> None:
    assert parse_cache_control([value]) is None


def test_a_directive_repeated_with_another_value_does_not_parse() -> None:
    assert parse_cache_control(["max-age=60", "max-age=61"]) is None
    assert parse_cache_control(["max-age=60", "max-age=60"]) == {"max-age": "60"}


def test_max_age_gives_the_lifetime() -> None:
    result = freshness("max-age=60")
    assert result.storable and result.ttl_s == 60


def test_s_maxage_wins_over_max_age_for_a_shared_cache() -> None:
    assert freshness("max-age=600, s-maxage=5").ttl_s == 5
    assert freshness("s-maxage=600, max-age=5").ttl_s == 600


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("no-store, max-age=60", "no-store"),
        ("private, max-age=60", "private"),
        ('private="Set-Cookie", max-age=60', "private"),
        ("no-cache, max-age=60", "no-cache"),
        ('no-cache="Set-Cookie", max-age=60', "no-cache"),
        ("max-age=sixty", "malformed"),
        ("max-age=-1", "malformed"),
        ("max-age=1.5", "malformed"),
        ("max-age", "malformed"),
        ("max-age=60,,max-age=30", "malformed"),
        ("public", "no-freshness"),
        ("max-age=0", "stale"),
    ],
)
def test_responses_a_shared_cache_must_not_reuse_are_not_stored(value: str, reason: str) -> None:
    result = freshness(value)
    assert not result.storable and result.reason == reason and result.ttl_s == 0


def test_a_response_without_cache_control_or_expires_is_not_stored() -> None:
    result = shared_freshness(200, [(b"content-type", b"application/json")], now_s=NOW)
    assert result.reason == "no-freshness"


def test_a_huge_max_age_is_capped() -> None:
    assert freshness("max-age=99999999999999999999").ttl_s == MAX_DELTA_SECONDS


def test_age_is_subtracted() -> None:
    assert freshness("max-age=60", (b"Age", b"45")).ttl_s == 15
    assert freshness("max-age=60", (b"Age", b"60")).reason == "stale"


def test_an_invalid_age_is_ignored_and_a_list_uses_its_first_member() -> None:
    assert freshness("max-age=60", (b"Age", b"soon")).ttl_s == 60
    assert freshness("max-age=60", (b"Age", b"10, 50")).ttl_s == 50


def test_the_apparent_age_from_date_counts_too() -> None:
    result = freshness("max-age=60", (b"Date", http_date(NOW - 20)), (b"Age", b"5"))
    assert result.ttl_s == 40


def test_expires_minus_date_gives_the_lifetime_without_max_age() -> None:
    headers = [(b"Date", http_date(NOW)), (b"Expires", http_date(NOW + 120))]
    assert shared_freshness(200, headers, now_s=NOW).ttl_s == 120
    with_max_age = [*headers, (b"Cache-Control", b"max-age=5")]
    assert shared_freshness(200, with_max_age, now_s=NOW).ttl_s == 5


def test_expires_without_date_counts_from_arrival() -> None:
    headers = [(b"Expires", http_date(NOW + 30))]
    assert shared_freshness(200, headers, now_s=NOW).ttl_s == 30


@pytest.mark.parametrize("expires", [b"0", b"tomorrow", b""])
def test_an_invalid_expires_means_already_expired(expires: bytes) -> None:
    result = shared_freshness(200, [(b"Expires", expires)], now_s=NOW)
    assert result.reason == "stale"


@pytest.mark.parametrize("status", [100, 206, 304])
def test_partial_and_not_modified_responses_are_not_stored(status: int) -> None:
    assert freshness("max-age=60", status=status).reason == "status"


def test_an_explicitly_fresh_error_response_may_be_stored() -> None:
    assert freshness("max-age=60", status=404).ttl_s == 60


def test_must_understand_stores_understood_statuses_even_with_no_store() -> None:
    assert freshness("must-understand, no-store, max-age=60").ttl_s == 60
    assert freshness("must-understand, no-store, max-age=60", status=299).reason == (
        "must-understand"
    )


def test_a_response_that_sets_a_cookie_is_not_stored() -> None:
    assert freshness("max-age=60", (b"Set-Cookie", b"session=1")).reason == "set-cookie"


def test_vary_must_be_covered_by_the_cache_key() -> None:
    vary = (b"Vary", b"Accept-Language, accept-encoding")
    keyed = frozenset({b"accept-language", b"accept-encoding"})
    stored = freshness("max-age=60", vary, key_headers=keyed)
    assert stored.storable and stored.vary == (b"accept-language", b"accept-encoding")
    narrower = freshness("max-age=60", vary, key_headers=frozenset({b"accept-language"}))
    assert narrower.reason == "vary"
    assert freshness("max-age=60", (b"Vary", b"*"), key_headers=keyed).reason == "vary"


@pytest.mark.parametrize(
    ("value", "storable"),
    [
        ("max-age=60", False),
        ("max-age=60, public", True),
        ("s-maxage=60", True),
        ("max-age=60, must-revalidate", True),
    ],
)
def test_a_response_to_an_authorized_request_needs_explicit_permission(
    value: str, storable: bool
) -> None:
    result = freshness(value, request_authorized=True)
    assert result.storable is storable
    assert result.reason == ("" if storable else "authorization")


@given(st.text(max_size=60))
def test_any_cache_control_text_gives_an_answer_not_an_exception(value: str) -> None:
    headers = [(b"cache-control", value.encode("utf-8", "surrogatepass"))]
    result = shared_freshness(200, headers, now_s=NOW)
    assert result.storable == (result.ttl_s > 0)


# --- what no shared cache stores, whatever its key ---------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [
        (200, [], None),
        (200, [(b"Cache-Control", b"max-age=60, public")], None),
        (404, [(b"ETag", b'"x"')], None),
        (206, [], "status"),
        (304, [], "status"),
        (101, [], "status"),
        (200, [(b"Cache-Control", b"max-age=60,, =x")], "malformed"),
        (200, [(b"cache-control", b"max-age=60"), (b"Cache-Control", b"NO-STORE")], "no-store"),
        (200, [(b"Cache-Control", b"must-understand, no-store")], None),
        (299, [(b"Cache-Control", b"must-understand, no-store")], "must-understand"),
        (200, [(b"Cache-Control", b'private="set-cookie", max-age=60')], "private"),
        (200, [(b"Cache-Control", b"no-cache")], "no-cache"),
        (200, [(b"Set-Cookie", b"session=1")], "set-cookie"),
        (200, [(b"Vary", b"accept, *")], "vary"),
        (200, [(b"Vary", b"accept")], None),
    ],
)
def test_what_no_shared_cache_may_store(
    status: int, headers: list[tuple[bytes, bytes]], reason: str | None
) -> None:
    assert shared_store_refusal(status, headers) == reason
    if reason is not None:  # the backend cache refuses it for the same reason
        assert shared_freshness(status, headers, now_s=NOW).reason == reason


# --- cache keys -------------------------------------------------------------------------

URL = "http://users.internal:9001/users/7?lang=de"


def test_the_key_is_a_prefixed_sha256() -> None:
    key = cache_key("GET", URL, [])
    assert key.startswith("cache:") and len(key) == len("cache:") + 64
    assert cache_key("GET", URL, [], prefix="gw:") == "gw:" + key.removeprefix("cache:")


def test_the_key_is_stable_and_the_method_case_does_not_matter() -> None:
    assert cache_key("get", URL, []) == cache_key("GET", URL, [])


def test_method_and_url_change_the_key() -> None:
    assert cache_key("GET", URL, []) != cache_key("HEAD", URL, [])
    assert cache_key("GET", URL, []) != cache_key("GET", URL + "&x=1", [])


def test_only_the_keyed_headers_count() -> None:
    keyed = frozenset({b"accept-language"})
    de = cache_key("GET", URL, [(b"Accept-Language", b"de"), (b"X-Trace", b"1")], keyed)
    assert de == cache_key("GET", URL, [(b"accept-language", b"de"), (b"X-Trace", b"2")], keyed)
    assert de != cache_key("GET", URL, [(b"Accept-Language", b"fr")], keyed)


def test_an_absent_header_and_an_empty_one_differ() -> None:
    keyed = frozenset({b"accept-language"})
    assert cache_key("GET", URL, [], keyed) != cache_key(
        "GET", URL, [(b"accept-language", b"")], keyed
    )


def test_parts_cannot_be_shifted_into_each_other() -> None:
    keyed = frozenset({b"a", b"b"})
    assert cache_key("GET", URL, [(b"a", b"1, b")], keyed) != cache_key(
        "GET", URL, [(b"a", b"1"), (b"b", b"")], keyed
    )
    assert cache_key("GET", URL, [(b"a", b"x"), (b"a", b"y")], keyed) != cache_key(
        "GET", URL, [(b"a", b"y"), (b"a", b"x")], keyed
    )
