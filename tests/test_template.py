"""Templates for backend paths, queries and headers (gateway._rules.template): pure unit tests."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._rules.template import (
    WILDCARD,
    Ref,
    Template,
    TemplateSyntaxError,
    UnresolvedReference,
    expand,
    header_value,
    parse_template,
    parse_url_template,
    render,
    scalar_text,
    url_value,
    walk,
)
from gateway._rules.urls import TemplateError, parse_base_url


def only_ref(text: str) -> Ref:
    """The single reference of a template that is nothing but one reference."""
    (part,) = parse_template(text).parts
    assert isinstance(part, Ref)
    return part


# --- parse_template: splitting -----------------------------------------------------------


def test_parse_template_splits_literals_and_references_in_order() -> None:
    template = parse_template("/users/{user_id}/orders?lang={query.lang}")
    assert template.parts == (
        "/users/",
        Ref("param", "user_id", (), "{user_id}"),
        "/orders?lang=",
        Ref("query", "lang", (), "{query.lang}"),
    )


def test_parse_template_keeps_original_text() -> None:
    assert parse_template("/a/{b}").text == "/a/{b}"


def test_parse_template_without_references_is_one_literal() -> None:
    assert parse_template("/plain/path?x=1").parts == ("/plain/path?x=1",)


def test_parse_template_of_empty_text_has_no_parts() -> None:
    assert parse_template("").parts == ()


def test_parse_template_adjacent_references_have_no_literal_between() -> None:
    assert parse_template("{a}{b}").parts == (
        Ref("param", "a", (), "{a}"),
        Ref("param", "b", (), "{b}"),
    )


def test_template_refs_lists_only_references() -> None:
    template = parse_template("x{a}y{b.c}z")
    assert [r.text for r in template.refs] == ["{a}", "{b.c}"]


def test_template_with_refs_maps_references_and_keeps_literals() -> None:
    template = parse_template("/x/{a}/y").with_refs(lambda r: Ref("backend", r.name, (), r.text, 3))
    assert template.parts == ("/x/", Ref("backend", "a", (), "{a}", 3), "/y")
    assert template.text == "/x/{a}/y"


# --- parse_template: reference kinds ------------------------------------------------------


def test_bare_name_is_a_param_reference() -> None:
    assert only_ref("{user_id}") == Ref("param", "user_id", (), "{user_id}")


def test_param_name_may_contain_dashes_and_underscores() -> None:
    assert only_ref("{_user-id_2}").name == "_user-id_2"


def test_query_reference_keeps_name_case() -> None:
    assert only_ref("{query.Lang}") == Ref("query", "Lang", (), "{query.Lang}")


def test_header_reference_lower_cases_name() -> None:
    assert only_ref("{header.X-Tenant}") == Ref("header", "x-tenant", (), "{header.X-Tenant}")


def test_dotted_reference_is_backend_with_key_path() -> None:
    assert only_ref("{a.b.c}") == Ref("backend", "a", ("b", "c"), "{a.b.c}")


def test_wildcard_in_segment_becomes_wildcard_in_path() -> None:
    ref = only_ref("{a.items[*].id}")
    assert (ref.kind, ref.name, ref.path) == ("backend", "a", ("items", WILDCARD, "id"))
    assert ref.has_wildcard


def test_index_on_head_becomes_int_in_path() -> None:
    ref = only_ref("{a[0].x}")
    assert (ref.kind, ref.name, ref.path) == ("backend", "a", (0, "x"))


def test_index_alone_on_head_makes_a_backend_reference() -> None:
    ref = only_ref("{a[2]}")
    assert (ref.kind, ref.name, ref.path) == ("backend", "a", (2,))


def test_digits_segment_becomes_int() -> None:
    ref = only_ref("{a.0}")
    assert (ref.kind, ref.name, ref.path) == ("backend", "a", (0,))
    assert isinstance(ref.path[0], int)


def test_wildcard_on_head_becomes_first_path_element() -> None:
    ref = only_ref("{list[*].id}")
    assert (ref.kind, ref.name, ref.path) == ("backend", "list", (WILDCARD, "id"))


def test_several_indexes_on_one_segment_are_kept_in_order() -> None:
    assert only_ref("{a.b[1][2].c}").path == ("b", 1, 2, "c")


def test_reference_without_wildcard_has_no_wildcard() -> None:
    assert not only_ref("{a.b[0]}").has_wildcard


def test_reference_text_is_the_braced_source() -> None:
    assert only_ref("{a.items[*].id}").text == "{a.items[*].id}"


def test_reference_index_defaults_to_minus_one() -> None:
    assert only_ref("{a.b}").index == -1


# --- parse_template: literal braces -------------------------------------------------------


def test_double_braces_are_literal_braces() -> None:
    assert parse_template("{{x}}").parts == ("{x}",)


def test_literal_braces_merge_with_surrounding_literals() -> None:
    assert parse_template("a{{b{c}}}d").parts == ("a{b", Ref("param", "c", (), "{c}"), "}d")


# --- parse_template: errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["{", "}", "a{b", "a}b", "{a", "a}", "{a}}", "{{a}", "}{", "{a{b}}", "{{{a}}"]
)
def test_unbalanced_braces_are_a_syntax_error(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(text)


def test_empty_reference_is_a_syntax_error() -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template("/a/{}")


@pytest.mark.parametrize("text", ["{1x}", "{-a}", "{a b}", "{a$}", "{ a}", "{é}"])
def test_invalid_reference_name_is_a_syntax_error(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(text)


@pytest.mark.parametrize("text", ["{query.}", "{header.}"])
def test_query_or_header_without_name_is_a_syntax_error(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(text)


@pytest.mark.parametrize("text", ["{header.bad name}", "{header.a:b}", "{header.a/b}"])
def test_invalid_header_name_is_a_syntax_error(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(text)


@pytest.mark.parametrize("text", ["{a[*].b[*]}", "{a[*][*]}", "{a.b[*].c[*].d}", "{a.x[*].y[*]}"])
def test_two_wildcards_in_one_reference_are_a_syntax_error(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(text)


def test_one_wildcard_in_each_of_two_references_is_allowed() -> None:
    template = parse_template("{a[*].x}/{b[*].y}")
    assert [r.has_wildcard for r in template.refs] == [True, True]


@pytest.mark.parametrize(
    "text",
    [
        "{a.b c}",
        "{a.}",
        "{a..b}",
        "{a.b[x]}",
        "{a.b[]}",
        "{a.b[0}",
        "{a.-b}",
        "{a.b[-1]}",
        "{a.b.}",
        "{a[x]}",
        "{a[*]x}",
    ],
)
def test_invalid_path_segment_is_a_syntax_error(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(text)


def test_template_syntax_error_is_a_template_error() -> None:
    with pytest.raises(TemplateError):
        parse_template("{")


def test_path_segment_with_trailing_newline_is_accepted() -> None:
    """``_SEGMENT`` uses ``^...$`` and ``$`` also matches before a final newline, so the
    newline is silently dropped instead of being refused like any other bad character."""
    with pytest.raises(TemplateSyntaxError):
        parse_template("{a.b\n}")


def test_header_name_with_trailing_newline_is_accepted() -> None:
    """``_HEADER_NAME`` uses ``^...$`` with ``match``: ``{header.X-Tenant\\n}`` becomes a
    header reference named ``"x-tenant\\n"`` instead of a syntax error."""
    with pytest.raises(TemplateSyntaxError):
        parse_template("{header.X-Tenant\n}")


def test_non_ascii_digits_are_accepted_as_an_index() -> None:
    """``\\d`` is Unicode-aware: ``[\\u0661]`` (ARABIC-INDIC DIGIT ONE) is taken as index 1,
    unlike ``select`` paths, which accept only ASCII digits."""
    with pytest.raises(TemplateSyntaxError):
        parse_template("{a[\u0661]}")


def test_huge_digits_segment_raises_plain_value_error() -> None:
    """A digits segment longer than Python's int-conversion limit (4300 digits) makes
    ``int()`` raise a plain ValueError, which the config loader (catching TemplateError)
    does not turn into a config problem."""
    with pytest.raises(TemplateSyntaxError):
        parse_template("{a." + "1" * 5000 + "}")


# --- parse_url_template -------------------------------------------------------------------


def test_url_template_with_query_and_references_is_parsed() -> None:
    template = parse_url_template("/orders?user={user_id}&limit=5")
    assert template.parts == ("/orders?user=", Ref("param", "user_id", (), "{user_id}"), "&limit=5")


@pytest.mark.parametrize("text", ["", "users/{id}", "{id}", "http://evil/x", "?q=1"])
def test_url_template_must_start_with_slash(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_url_template(text)


@pytest.mark.parametrize("text", ["/a#frag", "/a/{id}#", "/a?q=1#x"])
def test_url_template_must_not_contain_a_fragment(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_url_template(text)


@pytest.mark.parametrize(
    "text", ["/a b", '/a"b', "/a<b>", "/a{{b}}", "/caf\u00e9", "/a\\b", "/a|b", "/a^b", "/a\tb"]
)
def test_url_template_rejects_literal_characters_that_need_encoding(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_url_template(text)


def test_url_template_allows_pre_encoded_octets_and_sub_delims() -> None:
    text = "/a%20b/c;d=e/f:g@h/!$&'()*+,~?x=1"
    assert parse_url_template(text).parts == (text,)


def test_url_template_rejects_malformed_reference() -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_url_template("/a/{1x}")


def test_url_template_accepts_literal_ending_in_newline() -> None:
    """``is_url_literal`` (gateway/_rules/urls.py) uses ``^...*$`` with ``match``: a literal part
    ending in a newline passes, so ``/users\\n`` is accepted and fails only at request
    time, when httpx refuses the URL (httpx.InvalidURL, not an UnresolvedReference)."""
    with pytest.raises(TemplateSyntaxError):
        parse_url_template("/users\n")


def test_url_template_with_question_mark_has_query() -> None:
    assert parse_url_template("/a?x={id}").has_query


def test_url_template_without_question_mark_has_no_query() -> None:
    assert not parse_url_template("/a/{id}/b").has_query


def test_has_query_looks_only_at_literals() -> None:
    assert not parse_template("/a/{query.q}").has_query


# --- walk ------------------------------------------------------------------------------


def test_walk_with_empty_path_returns_value() -> None:
    value = {"a": 1}
    assert walk(value, ()) is value


def test_walk_follows_keys() -> None:
    assert walk({"a": {"b": "x"}}, ("a", "b")) == "x"


def test_walk_follows_list_indexes() -> None:
    assert walk({"a": [10, 20, 30]}, ("a", 2)) == 30


def test_walk_int_segment_on_dict_uses_string_key() -> None:
    assert walk({"0": "zero"}, (0,)) == "zero"


def test_walk_missing_key_is_unresolved() -> None:
    with pytest.raises(UnresolvedReference):
        walk({"a": 1}, ("b",))


def test_walk_index_out_of_range_is_unresolved() -> None:
    with pytest.raises(UnresolvedReference, match="out of range"):
        walk([1, 2], (2,))


def test_walk_name_segment_on_list_is_unresolved() -> None:
    with pytest.raises(UnresolvedReference):
        walk([1, 2], ("a",))


@pytest.mark.parametrize("value", ["abc", 5, None, True])
def test_walk_into_scalar_is_unresolved(value: Any) -> None:
    with pytest.raises(UnresolvedReference):
        walk(value, (0,))


def test_walk_returns_non_scalar_values() -> None:
    assert walk({"a": {"b": [1]}}, ("a",)) == {"b": [1]}


def test_digits_segment_with_leading_zero_misses_dict_key() -> None:
    """``{a.01}`` is parsed to the int 1, and ``walk`` looks up ``str(1) == "1"``, so the
    dict key ``"01"`` can never be reached (and key ``"1"`` is used instead if present)."""
    path = only_ref("{a.01}").path
    assert walk({"01": "v", "1": "wrong"}, path) == "v"


# --- expand ---------------------------------------------------------------------------


def test_expand_gives_one_value_per_element_in_order() -> None:
    value = {"items": [{"id": 3}, {"id": 1}, {"id": 2}]}
    assert expand(value, ("items", WILDCARD, "id")) == [3, 1, 2]


def test_expand_with_wildcard_last_gives_the_elements() -> None:
    assert expand({"ids": ["a", "b"]}, ("ids", WILDCARD)) == ["a", "b"]


def test_expand_with_wildcard_first_walks_the_top_level_array() -> None:
    assert expand([{"id": 1}, {"id": 2}], (WILDCARD, "id")) == [1, 2]


def test_expand_of_empty_array_is_empty() -> None:
    assert expand({"items": []}, ("items", WILDCARD, "id")) == []


def test_expand_when_wildcard_meets_non_array_is_unresolved() -> None:
    with pytest.raises(UnresolvedReference, match="array"):
        expand({"items": {"id": 1}}, ("items", WILDCARD, "id"))


def test_expand_missing_key_before_wildcard_is_unresolved() -> None:
    with pytest.raises(UnresolvedReference):
        expand({}, ("items", WILDCARD))


def test_expand_missing_key_in_one_element_is_unresolved() -> None:
    with pytest.raises(UnresolvedReference):
        expand({"items": [{"id": 1}, {}]}, ("items", WILDCARD, "id"))


# --- scalar_text ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "abc", "with space", "ü", "1.0", "true"])
def test_scalar_text_returns_strings_as_they_are(value: str) -> None:
    assert scalar_text(value) == value


@pytest.mark.parametrize("value", [0, 42, -7, 10**30])
def test_scalar_text_gives_ints_as_json_text(value: int) -> None:
    assert scalar_text(value) == json.dumps(value)


@pytest.mark.parametrize("value", [1.5, -0.25, 1.0, -0.0, 1e20, 1e-7, 123456789.125])
def test_scalar_text_gives_floats_as_json_text(value: float) -> None:
    assert scalar_text(value) == json.dumps(value)
    assert json.loads(scalar_text(value)) == value


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, "a boolean"),
        (False, "a boolean"),
        (None, "null"),
        ([], "an array"),
        (["a"], "an array"),
        ({}, "an object"),
        ({"a": 1}, "an object"),
    ],
)
def test_scalar_text_rejects_non_scalars_and_bools_in_jsons_words(value: Any, kind: str) -> None:
    with pytest.raises(UnresolvedReference) as caught:
        scalar_text(value)
    assert str(caught.value) == f"value is {kind}, not a string or number"


# --- url_value ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("abc", "abc"),
        ("a b&c=d", "a%20b%26c%3Dd"),
        ("a+b;c,d", "a%2Bb%3Bc%2Cd"),
        ("50%", "50%25"),
        ("ü", "%C3%BC"),
        ("-._~", "-._~"),
        ("...", "..."),
        (42, "42"),
        (1.5, "1.5"),
    ],
)
def test_url_value_percent_encodes_the_whole_value(value: Any, encoded: str) -> None:
    assert url_value(value) == encoded


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_url_value_rejects_empty_and_dot_segments(value: str) -> None:
    with pytest.raises(UnresolvedReference):
        url_value(value)


@pytest.mark.parametrize("value", ["a/b", "/", "a%2Fb/"])
def test_url_value_rejects_slash(value: str) -> None:
    with pytest.raises(UnresolvedReference):
        url_value(value)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a?b", "a%3Fb"),
        ("?", "%3F"),
        ("a#b", "a%23b"),
        ("#", "%23"),
        ("x#EXT#@c", "x%23EXT%23%40c"),
    ],
)
def test_url_value_accepts_question_mark_and_hash_encoded(value: str, encoded: str) -> None:
    # encoded whole, they stay data: no query or fragment can start inside a value
    assert url_value(value) == encoded


def test_url_value_gives_back_client_octets_that_are_not_utf8() -> None:
    # a client's %FF is decoded with surrogateescape; it goes back as %FF, never U+FFFD
    assert url_value("a\udcffb") == "a%FFb"


@pytest.mark.parametrize("value", ["a\x00", "\t", "a\nb", "\r", "\x1f", "\x7f", "\x85", "\x9f"])
def test_url_value_rejects_control_characters_including_c1(value: str) -> None:
    with pytest.raises(UnresolvedReference):
        url_value(value)


@pytest.mark.parametrize("value", [True, None, ["a"], {"a": "b"}])
def test_url_value_rejects_non_scalars(value: Any) -> None:
    with pytest.raises(UnresolvedReference):
        url_value(value)


# --- header_value ---------------------------------------------------------------------


def test_header_value_returns_text_unchanged() -> None:
    assert header_value("gold tier; ü") == "gold tier; ü"


def test_header_value_gives_numbers_as_json_text() -> None:
    assert (header_value(7), header_value(2.5)) == ("7", "2.5")


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x00b", "x\r\nX-Injected: 1"])
def test_header_value_rejects_cr_lf_and_nul(value: str) -> None:
    with pytest.raises(UnresolvedReference):
        header_value(value)


@pytest.mark.parametrize("value", ["\x01", "\x08", "\x0b", "\x1f", "\x7f"])
def test_header_value_rejects_other_c0_controls_and_del(value: str) -> None:
    with pytest.raises(UnresolvedReference):
        header_value(value)


def test_header_value_allows_tab() -> None:
    assert header_value("a\tb") == "a\tb"


@pytest.mark.parametrize("value", [False, None, [1], {}])
def test_header_value_rejects_non_scalars(value: Any) -> None:
    with pytest.raises(UnresolvedReference):
        header_value(value)


# --- render ---------------------------------------------------------------------------


def test_render_fills_references_and_keeps_literals() -> None:
    template = parse_template("/u/{id}/x?lang={query.lang}")
    values = {"{id}": "7", "{query.lang}": "en"}
    assert render(template, lambda r: values[r.text], url_value) == "/u/7/x?lang=en"


def test_render_encodes_every_reference_value() -> None:
    template = parse_template("{a}-{b}")
    assert render(template, lambda r: r.name, lambda v: f"<{v}>") == "<a>-<b>"


def test_render_does_not_encode_literals() -> None:
    template = parse_template("/a b/{x}")  # not a URL template: no literal check
    assert render(template, lambda r: "c d", url_value) == "/a b/c%20d"


def test_render_without_references_does_not_resolve() -> None:
    def resolve(ref: Ref) -> Any:
        raise AssertionError("resolve must not be called")

    assert render(parse_template("/static"), resolve, str) == "/static"


def test_render_error_from_resolve_names_the_reference() -> None:
    def resolve(ref: Ref) -> Any:
        raise UnresolvedReference("'b' is missing")

    with pytest.raises(UnresolvedReference) as info:
        render(parse_template("/x/{a.b}"), resolve, url_value)
    assert str(info.value) == "{a.b}: 'b' is missing"


def test_render_error_from_encode_names_the_reference() -> None:
    with pytest.raises(UnresolvedReference) as info:
        render(
            parse_template("/ok/{p}/{a.b}"), lambda r: "x" if r.kind == "param" else "/", url_value
        )
    assert str(info.value).startswith("{a.b}: ")


def test_render_error_names_the_reference_as_written() -> None:
    with pytest.raises(UnresolvedReference) as info:
        render(parse_template("{header.X-Tenant}"), lambda r: None, header_value)
    assert str(info.value).startswith("{header.X-Tenant}: ")


# --- properties -----------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8")),
    st.text(alphabet=st.sampled_from("/?#&=%+;., \x00\x1f\x7f\x85\u2028a~-_ü")),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
BASE = parse_base_url("http://127.0.0.1:9001/base")
URL_TEMPLATE = parse_url_template("/users/{a.v}/x?q={a.v}")


@settings(max_examples=200, deadline=None)
@given(JSON_SCALARS)
def test_url_value_never_changes_url_structure(value: Any) -> None:
    selected = {"v": value}
    try:
        path = render(URL_TEMPLATE, lambda ref: walk(selected, ref.path), url_value)
    except UnresolvedReference:
        return
    url = httpx.URL(BASE.join(path))
    assert url.scheme == "http"
    assert url.host == "127.0.0.1"
    assert url.port == 9001
    assert url.path.startswith("/base/users/")
    assert url.path.endswith("/x")
    assert [name for name, _ in url.params.multi_items()] == ["q"]
    raw_path, _, raw_query = url.raw_path.decode("ascii").partition("?")
    segments = raw_path.split("/")
    assert segments[:3] == ["", "base", "users"]
    assert segments[4:] == ["x"]
    name, _, encoded_query = raw_query.partition("=")
    assert name == "q"
    assert unquote(segments[3]) == scalar_text(value)
    assert unquote(encoded_query) == scalar_text(value)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=st.sampled_from("\r\n\x00\t\x0b\x85\u2028a:")),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
    )
)
def test_header_value_never_contains_cr_lf_or_nul(value: Any) -> None:
    try:
        text = header_value(value)
    except UnresolvedReference:
        return
    assert "\r" not in text
    assert "\n" not in text
    assert "\x00" not in text


TEMPLATE_TEXT = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from("{}[]*.ab_-09 \n")),
    st.lists(
        st.sampled_from(
            ["{", "}", "{{", "}}", "a", ".", "[*]", "[0]", "query.", "header.", "1", " ", "X-"]
        )
    ).map("".join),
)


@settings(max_examples=200, deadline=None)
@given(TEMPLATE_TEXT)
def test_parse_template_returns_a_template_or_raises_syntax_error(text: str) -> None:
    try:
        template = parse_template(text)
    except TemplateSyntaxError:
        return
    assert isinstance(template, Template)
    rejoined = "".join(
        part.replace("{", "{{").replace("}", "}}") if isinstance(part, str) else part.text
        for part in template.parts
    )
    assert rejoined == text
    assert all(part != "" for part in template.parts)
