"""Loading, validating and compiling config files, and the `gateway check`/`schema` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway._cli import main
from gateway._config.compile import load_config
from gateway._config.load import _find_model, interpolate, load_config_text
from gateway._config.model import GatewayConfig
from gateway._errors import ConfigError, ConfigProblem
from gateway._rules.template import render, url_value

REPO = Path(__file__).parent.parent
DEMO = REPO / "config" / "demo.yaml"

SPEC_CONFIG = """\
version: 1
server:
  bind: "127.0.0.1:8000"
defaults:
  timeout: 2s
  deadline: 5s
upstreams:
  users:
    url: http://127.0.0.1:9001
    timeout: 1s
    max_connections: 256
    headers:
      Authorization: "Bearer ${USERS_TOKEN}"   # ${VAR}: any string value; unset = config error; $$ = literal $
  orders:
    url: http://127.0.0.1:9002
endpoints:
  - path: /api/users/{user_id}/dashboard
    method: GET
    deadline: 800ms
    forward_headers: [Accept-Language]
    forward_query: [lang]
    backends:
      - name: profile
        upstream: users
        path: /users/{user_id}
        required: true
        timeout: 300ms
        select: data
        allow: [name, email, tier]
        rename: {tier: level}
        group: profile
      - name: orders
        upstream: orders
        path: /orders?user={user_id}&limit=5
        group: orders
        default: []
"""

ENV = {"USERS_TOKEN": "t0ken"}


def yaml_doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def one_endpoint(backends: str, endpoint_extra: str = "", path: str = "/api/{id}") -> str:
    """A config with upstreams `users` and `orders` and one endpoint."""
    return (
        yaml_doc(
            f"""
            version: 1
            upstreams:
              users: {{url: "http://127.0.0.1:9001"}}
              orders: {{url: "http://127.0.0.1:9002"}}
            endpoints:
              - path: {path}
            """
        )
        + textwrap.indent(yaml_doc(endpoint_extra), "    ")
        + "    backends:\n"
        + textwrap.indent(yaml_doc(backends), "      ")
    )


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("gw.yaml", env if env is not None else {}, text=text)
    return [str(p) for p in info.value.problems]


# --- the spec's example --------------------------------------------------------------------


def test_spec_example_config_loads_and_compiles() -> None:
    plan = load_config("gw.yaml", ENV, text=SPEC_CONFIG)
    assert sorted(plan.upstreams) == ["orders", "users"]
    (endpoint,) = plan.endpoints
    assert endpoint.path == "/api/users/{user_id}/dashboard"
    assert endpoint.deadline_s == pytest.approx(0.8)
    assert endpoint.forward_headers == ("accept-language",)
    assert endpoint.forward_query == frozenset({"lang"})
    assert [b.name for b in endpoint.backends] == ["profile", "orders"]


def test_spec_example_resolves_timeouts_from_backend_upstream_and_defaults() -> None:
    plan = load_config("gw.yaml", ENV, text=SPEC_CONFIG)
    profile, orders = plan.endpoints[0].backends
    assert profile.timeout_s == pytest.approx(0.3)
    assert orders.timeout_s == pytest.approx(2.0)
    assert plan.upstreams["users"].timeout_s == pytest.approx(1.0)
    assert plan.upstreams["users"].max_connections == 256


def test_spec_example_interpolates_the_upstream_header() -> None:
    plan = load_config("gw.yaml", ENV, text=SPEC_CONFIG)
    assert plan.upstreams["users"].headers == (("Authorization", "Bearer t0ken"),)
    assert plan.endpoints[0].backends[0].headers == (("Authorization", "Bearer t0ken"),)


def test_spec_example_compiles_transforms_and_placements() -> None:
    plan = load_config("gw.yaml", ENV, text=SPEC_CONFIG)
    profile, orders = plan.endpoints[0].backends
    body = {"data": {"name": "A", "email": "a@x", "tier": "gold", "password": "p"}}
    assert profile.transform.apply(body) == {"name": "A", "email": "a@x", "level": "gold"}
    assert profile.required
    assert profile.placement.group == "profile"
    assert orders.placement.has_default
    assert orders.placement.default == []
    assert render(orders.url, lambda ref: {"user_id": "7"}[ref.name], url_value) == (
        "/orders?user=7&limit=5"
    )


def test_spec_example_routes_its_endpoint() -> None:
    plan = load_config("gw.yaml", ENV, text=SPEC_CONFIG)
    match = plan.router.match("/api/users/42/dashboard", "GET")
    assert match.target is plan.endpoints[0]
    assert match.params == {"user_id": "42"}


def test_backend_without_default_has_no_default_but_default_null_has_one() -> None:
    text = one_endpoint(
        """
        - {name: a, upstream: users, path: /a}
        - {name: b, upstream: users, path: /b, default: null}
        """
    )
    a, b = load_config("gw.yaml", {}, text=text).endpoints[0].backends
    assert not a.placement.has_default
    assert b.placement.has_default
    assert b.placement.default is None


def test_demo_config_loads_without_environment() -> None:
    plan = load_config(str(DEMO), {})
    assert len(plan.endpoints) == 4


# --- interpolation ---------------------------------------------------------------------------


def test_unset_variable_is_a_problem_naming_its_path() -> None:
    assert problems_of(SPEC_CONFIG, env={}) == [
        "gw.yaml: upstreams.users.headers.Authorization: environment variable USERS_TOKEN is not set"
    ]


def test_unset_variable_in_a_list_names_the_index() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, allow: [x, '${FIELD}']}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].allow[1]: environment variable FIELD is not set"
    ]


def test_every_unset_variable_is_reported() -> None:
    _, problems = interpolate({"a": "${X}", "b": ["${Y} ${Z}"]}, {}, "f")
    assert [(p.path, p.message) for p in problems] == [
        ("a", "environment variable X is not set"),
        ("b[0]", "environment variable Y is not set"),
        ("b[0]", "environment variable Z is not set"),
    ]


def test_double_dollar_is_a_literal_dollar() -> None:
    data, problems = interpolate({"v": "a$$b $${X} $$$$"}, {}, "f")
    assert problems == []
    assert data == {"v": "a$b ${X} $$"}


def test_lone_dollar_is_kept() -> None:
    data, _ = interpolate({"v": "cost $5 and $X"}, {}, "f")
    assert data == {"v": "cost $5 and $X"}


def test_default_is_used_when_variable_is_unset() -> None:
    data, problems = interpolate({"v": "${HOST:-localhost}:${PORT:-}"}, {}, "f")
    assert problems == []
    assert data == {"v": "localhost:"}


def test_set_variable_wins_over_default() -> None:
    data, _ = interpolate({"v": "${HOST:-localhost}"}, {"HOST": "example.com"}, "f")
    assert data == {"v": "example.com"}


def test_interpolation_leaves_keys_and_non_strings_alone() -> None:
    value = {"${K}": 1, "n": 2, "b": True, "z": None, "f": 1.5}
    data, problems = interpolate(value, {}, "f")
    assert problems == []
    assert data == value


def test_interpolated_value_cannot_inject_yaml_structure() -> None:
    text = "version: 1\nserver:\n  bind: '${BIND}'\n"
    evil = "127.0.0.1:8000\n  evil: 1"
    config = load_config_text(text, "gw.yaml", {"BIND": evil})
    assert config.server.bind == evil


def test_interpolated_value_with_yaml_syntax_stays_one_string() -> None:
    data, _ = interpolate({"v": "${V}"}, {"V": "{a: 1}\n- [b]"}, "f")
    assert data == {"v": "{a: 1}\n- [b]"}


def test_interpolation_uses_the_process_environment_when_env_is_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USERS_TOKEN", "from-os")
    plan = load_config("gw.yaml", None, text=SPEC_CONFIG)
    assert plan.upstreams["users"].headers == (("Authorization", "Bearer from-os"),)


def test_problem_does_not_echo_an_interpolated_secret() -> None:
    text = SPEC_CONFIG
    problems = problems_of(text, env={"USERS_TOKEN": "s3cret\nX-Injected: 1"})
    assert problems == [
        "gw.yaml: upstreams.users.headers.Authorization: header value has a control character"
    ]
    assert "s3cret" not in "".join(problems)


# --- validation ------------------------------------------------------------------------------


def test_unknown_backend_key_names_its_path_and_the_allowed_keys() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, foo: 1}")
    (problem,) = problems_of(text)
    assert problem.startswith(
        "gw.yaml: endpoints[0].backends[0].foo: unknown key 'foo' (allowed: name, upstream, path,"
    )
    assert "rename, group, default)" in problem


def test_unknown_top_level_key_lists_the_top_level_keys() -> None:
    assert problems_of("version: 1\nfoo: 1\n") == [
        "gw.yaml: foo: unknown key 'foo' (allowed: version, server, defaults, upstreams, "
        "endpoints, tracing, state, auth)"
    ]


def test_unknown_upstream_key_lists_the_upstream_keys() -> None:
    text = "version: 1\nupstreams:\n  users: {url: 'http://h', retry: 3}\n"
    (problem,) = problems_of(text)
    assert problem.startswith("gw.yaml: upstreams.users.retry: unknown key 'retry' (allowed: url,")


def test_unknown_endpoint_key_lists_the_endpoint_keys() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a}", endpoint_extra="caching: true\n")
    (problem,) = problems_of(text)
    assert problem.startswith(
        "gw.yaml: endpoints[0].caching: unknown key 'caching' (allowed: path,"
    )


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("defaults.timeout", "version: 1\ndefaults: {timeout: 2}\n"),
        ("defaults.deadline", "version: 1\ndefaults: {deadline: 1.5}\n"),
        ("upstreams.u.timeout", "version: 1\nupstreams: {u: {url: 'http://h', timeout: 3}}\n"),
    ],
)
def test_bare_number_duration_is_an_error(where: str, text: str) -> None:
    (problem,) = problems_of(text)
    assert problem.startswith(f"gw.yaml: {where}: a duration must be a string with a unit")


def test_bare_number_backend_timeout_is_an_error() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, timeout: 1}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].timeout: a duration must be a string with a unit, "
        "like 250ms or 2s (got a number)"
    ]


def test_duration_without_unit_in_a_string_is_an_error() -> None:
    (problem,) = problems_of("version: 1\ndefaults: {timeout: '2'}\n")
    assert problem.startswith("gw.yaml: defaults.timeout: invalid duration '2'")


def test_size_accepts_a_unit_and_refuses_zero() -> None:
    config = load_config_text("version: 1\ndefaults: {max_response_size: 512KiB}\n", "f", {})
    assert config.defaults.max_response_size == 512 * 1024
    (problem,) = problems_of("version: 1\ndefaults: {max_response_size: 0}\n")
    assert problem.startswith("gw.yaml: defaults.max_response_size: a size must be greater")


def test_missing_required_key_is_named() -> None:
    text = one_endpoint("- {name: a, path: /a}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].upstream: required key is missing"
    ]


def test_wrong_version_is_explained() -> None:
    assert problems_of("version: 2\n") == [
        "gw.yaml: version: unsupported config version (this gateway reads version: 1)"
    ]


def test_empty_file_is_an_error() -> None:
    assert problems_of("") == ["gw.yaml: the file is empty"]


def test_top_level_list_is_an_error() -> None:
    assert problems_of("- a\n") == ["gw.yaml: the top level must be a mapping"]


def test_several_validation_problems_are_reported_at_once() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, timeout: 1, foo: 2}")
    text = text.replace("version: 1\n", "version: 1\ndefaults: {deadline: 5}\n")
    problems = problems_of(text)
    assert len(problems) == 3
    assert [p.split(": ")[1] for p in problems] == [
        "defaults.deadline",
        "endpoints[0].backends[0].timeout",
        "endpoints[0].backends[0].foo",
    ]


def test_flow_mapping_with_question_mark_in_a_value_loads() -> None:
    # pyyaml#128: the pure-Python loader rejects "?" inside a flow mapping value
    text = one_endpoint("- {name: a, upstream: users, path: /x?y=1}")
    backend = load_config("gw.yaml", {}, text=text).endpoints[0].backends[0]
    assert backend.url.text == "/x?y=1"
    assert backend.url.has_query


def test_broken_yaml_names_line_and_column() -> None:
    text = "version: 1\nserver:\n  bind: [127.0.0.1\n  backlog: 5\n"
    (problem,) = problems_of(text)
    assert problem.startswith("gw.yaml: invalid YAML at line 4, column ")


def test_broken_yaml_tab_indentation_names_line_and_column() -> None:
    text = "version: 1\nserver:\n\tbind: x\n"
    (problem,) = problems_of(text)
    assert problem.startswith("gw.yaml: invalid YAML at line 3, column 1")


def test_missing_colon_is_reported_at_the_line_of_the_key() -> None:
    text = yaml_doc(
        """
        version: 1
        upstreams:
          users:
            url: http://127.0.0.1:9001
        endpoints:
          - path: /api/{id}
            backends:
              - name: a
                upstream users
                path: /a
        """
    )
    assert text.splitlines()[8].strip() == "upstream users"  # line 9
    assert problems_of(text) == [
        "gw.yaml: invalid YAML at line 9, column 9: could not find expected ':' after this key"
    ]


def test_unclosed_flow_sequence_names_where_it_was_opened() -> None:
    text = "version: 1\nserver:\n  bind: [127.0.0.1\n  backlog: 5\n"
    assert problems_of(text) == [
        "gw.yaml: invalid YAML at line 4, column 10: did not find expected ',' or ']' "
        "(while parsing a flow sequence started at line 3, column 9)"
    ]


def test_duplicate_keys_are_reported_with_both_lines() -> None:
    text = yaml_doc(
        """
        version: 1
        upstreams:
          users:
            url: http://127.0.0.1:9001
            url: http://127.0.0.1:9002
        endpoints:
          - path: /api/{id}
            backends:
              - name: a
                upstream: users
                path: /a
                path: /b
              - {name: b, upstream: users, path: /c, path: /d}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: duplicate key 'url' at line 5 (first at line 4): "
        "keys of a mapping must be unique",
        "gw.yaml: duplicate key 'path' at line 12 (first at line 11): "
        "keys of a mapping must be unique",
        "gw.yaml: duplicate key 'path' at line 13, column 46 (first at line 13, column 36): "
        "keys of a mapping must be unique",
    ]


def test_duplicate_key_is_refused_by_gateway_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "version: 1\nupstreams:\n  u:\n    url: http://127.0.0.1:1\n    url: http://127.0.0.1:2\n",
        encoding="utf-8",
    )
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"{path}: duplicate key 'url' at line 5 (first at line 4): "
        "keys of a mapping must be unique\n"
    )


def test_keys_brought_in_by_a_merge_may_be_overridden() -> None:
    text = yaml_doc(
        """
        version: 1
        upstreams:
          base: &base {url: "http://127.0.0.1:9001", timeout: 1s}
          other:
            <<: *base
            timeout: 2s
        """
    )
    plan = load_config("gw.yaml", {}, text=text)
    assert plan.upstreams["other"].timeout_s == 2.0


@pytest.mark.parametrize("word", ["yes", "on", "no", "off", "Yes", "ON", "y", "n"])
def test_yaml_11_boolean_words_are_explained(word: str) -> None:
    text = one_endpoint(f"- {{name: a, upstream: users, path: /a, required: {word}}}")
    assert problems_of(text) == [
        f"gw.yaml: endpoints[0].backends[0].required: {word!r} is not a boolean: "
        "YAML 1.2 booleans are true and false"
    ]


def test_any_boolean_field_explains_yaml_12_booleans_without_echoing_other_values() -> None:
    text = one_endpoint(
        "- {name: a, upstream: users, path: /a}", endpoint_extra="debug: ${DEBUG}\n"
    )
    assert problems_of(text, {"DEBUG": "s3cret"}) == [
        "gw.yaml: endpoints[0].debug: not a boolean: YAML 1.2 booleans are true and false"
    ]


def test_a_value_that_fits_no_member_of_a_union_is_one_problem_at_its_own_path() -> None:
    """pydantic reports such a value once per member (`X | list[X]`, `X | false`), each
    under a tag naming the member: the member the value has the shape of is reported."""
    text = one_endpoint(
        "- {name: a, upstream: users, path: /a, when: [{query: 1}]}",
        endpoint_extra="rate_limit: {rate: 1/s, burst: 0}\nauth: 7\ncors: 5\n",
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].rate_limit.burst: Input should be greater than or equal to 1",
        "gw.yaml: endpoints[0].auth: Input should be a valid string or a valid list",
        "gw.yaml: endpoints[0].cors: cors takes settings, like {allow_origins: "
        "[https://app.example]}, or false (no CORS on this endpoint)",
        "gw.yaml: endpoints[0].backends[0].when[0].query: Input should be a valid string",
    ]


# --- cross-references (compile_config) ---------------------------------------------------------


ROUNDS_CONFIG = """\
version: 1
defaults: {deadline: 5}
upstreams:
  users: {url: "http://127.0.0.1:9001", timeout: 1}
  orders: {url: "http://127.0.0.1:9002"}
endpoints:
  - path: /bad/{id}
    debug: yes
    foo: 1
    backends:
      - {name: a, upstream: users, path: "/a/{id}", timeout: 1}
      - {name: b, upstream: ordrs, path: "/b/{idd}"}
      - {name: c, upstream: users, path: "/c/{a.x}"}
  - path: /good/{id}
    backends:
      - {name: d, upstream: users, path: "/d/{nope}"}
      - {name: e, upstream: orders, path: "/e/{d.items[*].id}"}
      - {name: f, upstream: orders, path: "/f", for_each: true}
"""


def test_validation_and_cross_reference_problems_come_out_in_one_run() -> None:
    assert problems_of(ROUNDS_CONFIG) == [
        # validation: unknown keys, bare numbers, YAML 1.1 booleans
        "gw.yaml: defaults.deadline: a duration must be a string with a unit, like 250ms or "
        "2s (got a number)",
        "gw.yaml: upstreams.users.timeout: a duration must be a string with a unit, like "
        "250ms or 2s (got a number)",
        "gw.yaml: endpoints[0].debug: 'yes' is not a boolean: YAML 1.2 booleans are true and false",
        "gw.yaml: endpoints[0].backends[0].timeout: a duration must be a string with a unit, "
        "like 250ms or 2s (got a number)",
        "gw.yaml: endpoints[0].foo: unknown key 'foo' (allowed: path, method, deadline, "
        "forward_headers, forward_query, debug, passthrough, websocket, rate_limit, cache, auth, "
        "response_headers, remove_headers, cors, compression, merge, shape, request_schema, "
        "query_schema, backends)",
        # cross-references of every part that is valid, at its place in the file (the
        # left-out upstream users is not reported as unknown; backend a is kept without
        # its invalid timeout)
        "gw.yaml: endpoints[0].backends[1].upstream: unknown upstream 'ordrs' "
        "(known: orders, users)",
        "gw.yaml: endpoints[0].backends[1].path: unknown path parameter {idd} "
        "(the endpoint path has: id)",
        "gw.yaml: endpoints[1].backends[0].path: unknown path parameter {nope} "
        "(the endpoint path has: id)",
        "gw.yaml: endpoints[1].backends[1].path: {d.items[*].id} walks an array: "
        "set for_each: true",
        "gw.yaml: endpoints[1].backends[2].for_each: needs a reference with [*], like "
        "{orders.items[*].id}",
    ]


def test_problems_of_parts_after_a_left_out_one_name_their_place_in_the_file() -> None:
    text = yaml_doc(
        """
        version: 1
        upstreams:
          users: {url: "http://127.0.0.1:9001"}
        endpoints:
          - {path: /x, method: FETCH, backends: [{name: a, upstream: users, path: /a}]}
          - path: /y
            backends:
              - {name: a, upstream: users, path: /a, timeout: 5}
              - {name: b, upstream: nope, path: /b}
          - {path: /y, backends: [{name: a, upstream: users, path: /a}]}
        """
    )
    problems = problems_of(text)
    assert problems[2:] == [
        "gw.yaml: endpoints[1].backends[1].upstream: unknown upstream 'nope' (known: users)",
        "gw.yaml: endpoints[2].path: GET /y is already defined by endpoints[1]",
    ]
    assert [p.split(": ")[1] for p in problems[:2]] == [
        "endpoints[0].method",
        "endpoints[1].backends[0].timeout",
    ]


def test_a_reference_to_a_backend_left_out_is_not_reported_as_unknown() -> None:
    text = one_endpoint(
        """
        - {name: orders, upstream: orders, path: /o, timeout: 1}
        - {name: items, upstream: users, path: "/i/{orders.items[*].id}", for_each: true}
        - {name: more, upstream: users, path: "/m/{orders}"}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].timeout: a duration must be a string with a unit, "
        "like 250ms or 2s (got a number)"
    ]


def test_a_backend_without_a_usable_name_hides_no_other_problem_but_its_references() -> None:
    text = one_endpoint(
        """
        - {upstream: orders, path: /o}
        - {name: items, upstream: nope, path: "/i/{orders.id}"}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].name: required key is missing",
        "gw.yaml: endpoints[0].backends[1].upstream: unknown upstream 'nope' "
        "(known: orders, users)",
    ]


def test_unset_variables_validation_and_cross_references_come_out_in_one_run() -> None:
    text = one_endpoint(
        "- {name: a, upstream: nope, path: /a, timeout: 1}\n"
        "- {name: b, upstream: users, path: /b, timeout: '${T}'}\n"
        "- {name: c, upstream: nope, path: /c}\n"
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[1].timeout: environment variable T is not set",
        "gw.yaml: endpoints[0].backends[0].timeout: a duration must be a string with a unit, "
        "like 250ms or 2s (got a number)",
        # a backend with an invalid setting of its own is still cross-checked
        "gw.yaml: endpoints[0].backends[0].upstream: unknown upstream 'nope' "
        "(known: orders, users)",
        "gw.yaml: endpoints[0].backends[2].upstream: unknown upstream 'nope' "
        "(known: orders, users)",
    ]


REVIEW_ROUNDS_CONFIG = """\
version: 1
bogus: 1
upstreams:
  u: {url: "http://127.0.0.1:1"}
endpoints:
  - path: /dd
    path: /ee
    backends: [{name: b, upstream: nope, path: /c, required: yes}]
"""


def test_a_duplicate_key_and_a_backends_invalid_setting_hide_no_other_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the repeated key is checked with its last value; the backend is kept without its
    # invalid `required`, so its (valid) unknown upstream is found in the same run
    path = write(tmp_path, REVIEW_ROUNDS_CONFIG)
    assert main(["check", path]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: duplicate key 'path' at line 7 (first at line 6): "
        "keys of a mapping must be unique",
        f"{path}: endpoints[0].backends[0].required: 'yes' is not a boolean: YAML 1.2 "
        "booleans are true and false",
        f"{path}: bogus: unknown key 'bogus' (allowed: version, server, defaults, upstreams, "
        "endpoints, tracing, state, auth)",
        f"{path}: endpoints[0].backends[0].upstream: unknown upstream 'nope' (known: u)",
    ]


def test_a_duplicate_key_in_an_otherwise_valid_file_still_shows_its_cross_references() -> None:
    # what a reload (which loads the file the same way) reports too
    text = REVIEW_ROUNDS_CONFIG.replace("bogus: 1\n", "").replace("required: yes", "required: true")
    assert problems_of(text) == [
        "gw.yaml: duplicate key 'path' at line 6 (first at line 5): "
        "keys of a mapping must be unique",
        "gw.yaml: endpoints[0].backends[0].upstream: unknown upstream 'nope' (known: u)",
    ]


def test_a_repeated_route_parameter_hides_no_unknown_parameter_of_its_backends() -> None:
    text = one_endpoint(
        """
        - {name: a, upstream: users, path: "/a/{zz}/{id}"}
        - {name: b, upstream: users, path: "/b/{a.x}/{yy}"}
        """,
        path="/b/{id}/{id}",
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].path: parameter {id} appears twice",
        "gw.yaml: endpoints[0].backends[0].path: unknown path parameter {zz} "
        "(the endpoint path has: id)",
        "gw.yaml: endpoints[0].backends[1].path: unknown path parameter {yy} "
        "(the endpoint path has: id)",
    ]


def test_a_backend_whose_call_is_invalid_is_left_out_and_not_reported_unknown() -> None:
    # for_each shapes the call (it decides whether a [*] reference is right): the backend
    # is left out, and the reference to it is not an unknown backend
    text = one_endpoint(
        """
        - {name: a, upstream: nope, path: "/a", for_each: yes}
        - {name: b, upstream: users, path: "/b/{a.x}", required: on}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].for_each: 'yes' is not a boolean: YAML 1.2 "
        "booleans are true and false",
        "gw.yaml: endpoints[0].backends[1].required: 'on' is not a boolean: YAML 1.2 "
        "booleans are true and false",
    ]


def test_unknown_upstream_names_the_known_ones() -> None:
    text = one_endpoint(
        """
        - {name: profile, upstream: users, path: "/users/{id}"}
        - {name: orders, upstream: ordrs, path: /orders}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[1].upstream: unknown upstream 'ordrs' (known: orders, users)"
    ]


def test_unknown_upstream_when_none_are_defined() -> None:
    text = "version: 1\nendpoints:\n  - {path: /a, backends: [{name: a, upstream: u, path: /a}]}\n"
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].upstream: unknown upstream 'u' (known: none defined)"
    ]


def test_unknown_path_parameter_names_the_endpoint_parameters() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: '/users/{user_id}'}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].path: unknown path parameter {user_id} "
        "(the endpoint path has: id)"
    ]


def test_unknown_path_parameter_on_an_endpoint_without_parameters() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: '/users/{id}'}", path="/api")
    (problem,) = problems_of(text)
    assert problem.endswith("unknown path parameter {id} (the endpoint path has: none)")


def test_duplicate_backend_names_are_refused() -> None:
    text = one_endpoint(
        """
        - {name: a, upstream: users, path: /a}
        - {name: a, upstream: orders, path: /b}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[1].name: duplicate backend name 'a'"
    ]


def test_duplicate_routes_are_refused_even_with_other_parameter_names() -> None:
    text = yaml_doc(
        """
        version: 1
        upstreams: {users: {url: "http://h"}}
        endpoints:
          - {path: "/a/{x}", backends: [{name: a, upstream: users, path: /a}]}
          - {path: "/a/{y}", backends: [{name: a, upstream: users, path: /a}]}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[1].path: GET /a/{y} is already defined by endpoints[0]"
    ]


def test_same_path_with_different_methods_is_allowed() -> None:
    text = yaml_doc(
        """
        version: 1
        upstreams: {users: {url: "http://h"}}
        endpoints:
          - {path: "/a/{x}", backends: [{name: a, upstream: users, path: /a}]}
          - {path: "/a/{x}", method: post, backends: [{name: a, upstream: users, path: /a}]}
        """
    )
    plan = load_config("gw.yaml", {}, text=text)
    assert [e.method for e in plan.endpoints] == ["GET", "POST"]


def test_passthrough_with_two_backends_is_refused() -> None:
    text = one_endpoint(
        """
        - {name: a, upstream: users, path: /a}
        - {name: b, upstream: orders, path: /b}
        """,
        endpoint_extra="passthrough: true\n",
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends: a passthrough endpoint has exactly one backend (found 2)"
    ]


def test_passthrough_backend_with_a_transform_is_refused() -> None:
    text = one_endpoint(
        "- {name: a, upstream: users, path: /a, select: data}", endpoint_extra="passthrough: true\n"
    )
    (problem,) = problems_of(text)
    assert problem.startswith("gw.yaml: endpoints[0].backends[0].select: not used by a passthrough")


@pytest.mark.parametrize("path", ["/__gateway", "/__gateway/health", "/__gateway/{x}"])
def test_gateway_admin_prefix_is_reserved(path: str) -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a}", path=path)
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].path: /__gateway/ is reserved for the gateway"
    ]


def test_a_path_merely_starting_with_the_admin_name_is_allowed() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a}", path="/__gatewayx")
    assert load_config("gw.yaml", {}, text=text).endpoints[0].path == "/__gatewayx"


@pytest.mark.parametrize(
    "header",
    [
        "Connection",
        "Host",
        "transfer-encoding",
        "TE",
        "Content-Length",
        "X-Forwarded-For",
        "Via",
        "Forwarded",
        "X-Gateway-Complete",
        "X-Request-Id",
        "traceparent",
        "Expect",
    ],
)
def test_forwarding_a_hop_by_hop_or_gateway_framed_header_is_refused(header: str) -> None:
    text = one_endpoint(
        "- {name: a, upstream: users, path: /a}",
        endpoint_extra=f"forward_headers: [Accept, {header}]\n",
    )
    assert problems_of(text) == [
        f"gw.yaml: endpoints[0].forward_headers[1]: {header} is hop-by-hop or set by the "
        "gateway and cannot be forwarded"
    ]


def test_upstream_header_set_by_the_gateway_is_refused() -> None:
    text = "version: 1\nupstreams:\n  u: {url: 'http://h', headers: {Host: evil.example}}\n"
    assert problems_of(text) == [
        "gw.yaml: upstreams.u.headers.Host: this header is set by the gateway"
    ]


@pytest.mark.parametrize("header", ["Date", "Content-Type", "Connection", "X-Request-Id"])
def test_returning_a_header_the_gateway_sets_is_refused(header: str) -> None:
    text = one_endpoint(f"- {{name: a, upstream: users, path: /a, return_headers: [{header}]}}")
    assert problems_of(text) == [
        f"gw.yaml: endpoints[0].backends[0].return_headers[0]: {header} is set by the gateway "
        "and cannot be returned"
    ]


def test_invalid_header_name_is_refused() -> None:
    text = one_endpoint(
        "- {name: a, upstream: users, path: /a}", endpoint_extra="forward_headers: ['Bad Name']\n"
    )
    assert problems_of(text) == ["gw.yaml: endpoints[0].forward_headers[0]: invalid header name"]


def test_bad_upstream_url_is_reported_once_not_again_for_its_backends() -> None:
    text = yaml_doc(
        """
        version: 1
        upstreams: {users: {url: "ftp://h"}}
        endpoints:
          - {path: /a, backends: [{name: a, upstream: users, path: /a}]}
        """
    )
    assert problems_of(text) == ["gw.yaml: upstreams.users.url: scheme must be http or https"]


def test_bad_route_is_reported_at_the_endpoint_path() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a}", path="'/a/pre{id}'")
    (problem,) = problems_of(text)
    assert problem.startswith("gw.yaml: endpoints[0].path: segment 'pre{id}'")


def test_bad_backend_path_template_is_reported_at_its_path() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: 'a/b'}")
    assert problems_of(text) == ["gw.yaml: endpoints[0].backends[0].path: must start with '/'"]


def test_allow_and_deny_together_are_refused() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, allow: [x], deny: [y]}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].allow: use either allow or deny, not both"
    ]


def test_dotted_rename_target_is_reported_at_rename_not_select() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, rename: {tier: level.x}}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].rename: "
        "rename target 'level.x' must be a single non-empty key"
    ]


def test_bad_allow_path_is_reported_at_allow_not_select() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, allow: ['a..b']}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].allow: invalid dot path 'a..b': "
        "segments must be non-empty"
    ]


def test_bad_deny_path_is_reported_at_deny_not_select() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, deny: ['x.']}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].deny: invalid dot path 'x.': segments must be non-empty"
    ]


def test_bad_select_path_is_reported_at_select() -> None:
    text = one_endpoint("- {name: a, upstream: users, path: /a, select: 'data..x'}")
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].select: invalid dot path 'data..x': "
        "segments must be non-empty"
    ]


def test_several_cross_reference_problems_are_reported_at_once() -> None:
    text = yaml_doc(
        """
        version: 1
        upstreams:
          users: {url: "http://127.0.0.1:9001"}
          orders: {url: "http://127.0.0.1:9002"}
        endpoints:
          - path: /api/users/{user_id}
            forward_headers: [Connection]
            backends:
              - {name: a, upstream: users, path: "/users/{id}"}
              - {name: a, upstream: ordrs, path: /orders}
          - path: /__gateway/x
            backends:
              - {name: b, upstream: users, path: /b}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].forward_headers[0]: Connection is hop-by-hop or set by the "
        "gateway and cannot be forwarded",
        "gw.yaml: endpoints[0].backends[0].path: unknown path parameter {id} "
        "(the endpoint path has: user_id)",
        "gw.yaml: endpoints[0].backends[1].upstream: unknown upstream 'ordrs' "
        "(known: orders, users)",
        "gw.yaml: endpoints[0].backends[1].name: duplicate backend name 'a'",
        "gw.yaml: endpoints[1].path: /__gateway/ is reserved for the gateway",
    ]


def test_config_problem_without_path_names_only_the_file() -> None:
    assert str(ConfigProblem("f.yaml", "", "the file is empty")) == "f.yaml: the file is empty"


def test_config_error_message_has_one_line_per_problem() -> None:
    error = ConfigError([ConfigProblem("f", "a", "x"), ConfigProblem("f", "b", "y")])
    assert str(error) == "f: a: x\nf: b: y"


# --- CLI: check ---------------------------------------------------------------------------------

BAD_CONFIG = one_endpoint(
    """
    - {name: profile, upstream: users, path: "/users/{user_id}"}
    - {name: orders, upstream: ordrs, path: /orders}
    """
)


def write(tmp_path: Path, text: str, name: str = "gw.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_check_prints_a_summary_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("USERS_TOKEN", "t")
    file = write(tmp_path, SPEC_CONFIG)
    assert main(["check", file]) == 0
    out, err = capsys.readouterr()
    # the spec's example: orders has no timeout of its own, so 2s against an 800ms deadline
    assert err == (
        f"{file}: endpoints[0].backends[1]: warning: timeout 2s (from defaults.timeout) is "
        "longer than the endpoint's deadline 800ms (from endpoints[0].deadline); the deadline "
        "always cuts it first\n"
    )
    lines = out.splitlines()
    assert lines[0] == f"{file}: OK: 1 endpoint(s), 2 upstream(s)"
    assert any("GET /api/users/{user_id}/dashboard" in line for line in lines)
    assert any(line.split()[:1] == ["profile"] and "required" in line for line in lines)
    assert any(line.split()[:1] == ["orders"] and "default" in line for line in lines)
    assert any("upstream users" in line and "http://127.0.0.1:9001" in line for line in lines)


def test_check_summary_does_not_print_header_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("USERS_TOKEN", "very-secret-token")
    assert main(["check", write(tmp_path, SPEC_CONFIG)]) == 0
    assert "very-secret-token" not in capsys.readouterr().out


def test_check_reports_every_problem_one_per_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(tmp_path, BAD_CONFIG)
    assert main(["check", file]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{file}: endpoints[0].backends[0].path: unknown path parameter {{user_id}} "
        "(the endpoint path has: id)",
        f"{file}: endpoints[0].backends[1].upstream: unknown upstream 'ordrs' (known: orders, users)",
    ]
    assert "Traceback" not in err


def test_check_reports_broken_yaml_with_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(tmp_path, "version: 1\nupstreams: {u: [\n")
    assert main(["check", file]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{file}: invalid YAML at line ")
    assert ", column " in err
    assert len(err.splitlines()) == 1


def test_check_missing_file_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = str(tmp_path / "nope.yaml")
    assert main(["check", file]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{file}: cannot read file: No such file or directory\n"


def test_check_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path}: cannot read file:")
    assert "Traceback" not in err


def test_check_non_utf8_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err == f"{path}: the file is not UTF-8 text\n"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}


def test_check_subprocess_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(BAD_CONFIG, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(bad_file)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        f"{bad_file}: endpoints[0].backends[1].upstream: unknown upstream 'ordrs' "
        "(known: orders, users)"
    ) in proc.stderr.splitlines()


def test_check_subprocess_demo_config_exits_0() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(DEMO)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{DEMO}: OK: 4 endpoint(s), 3 upstream(s)")
    assert proc.stderr == ""


# --- CLI: schema ----------------------------------------------------------------------------------


def test_schema_prints_json_with_every_top_level_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == set(GatewayConfig.model_fields)
    assert set(schema["properties"]) == {
        "version",
        "server",
        "defaults",
        "upstreams",
        "endpoints",
        "tracing",
        "state",
        "auth",
    }
    assert schema["additionalProperties"] is False


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            found = _find_model(field.annotation)
            if found is not None:
                todo.append(found)
    return seen


def test_every_config_model_is_walked() -> None:
    names = {m.__name__ for m in _models(GatewayConfig)}
    assert names == {
        "GatewayConfig",
        "ServerConfig",
        "ServerTLSConfig",
        "DefaultsConfig",
        "CorsConfig",
        "CompressionConfig",
        "WebSocketConfig",
        "MergeConfig",
        "ShapeConfig",
        "UpstreamConfig",
        "EndpointConfig",
        "BackendConfig",
        "ConditionConfig",
        "BodyConfig",
        "GraphQLConfig",
        "TracingConfig",
        "RetryConfig",
        "CircuitBreakerConfig",
        "BulkheadConfig",
        "HedgeConfig",
        "OutlierDetectionConfig",
        "RateLimitConfig",
        "BackendCacheConfig",
        "EndpointCacheConfig",
        "StateConfig",
        "AuthPolicyConfig",
        "JwtConfig",
        "ApiKeyConfig",
        "ForwardAuthConfig",
        "RequireConfig",
    }


def test_every_field_of_every_config_model_has_a_description() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in _models(GatewayConfig)
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert missing == []


def test_every_property_in_the_printed_schema_has_a_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["schema"])
    schema: dict[str, Any] = json.loads(capsys.readouterr().out)
    objects = [schema, *schema["$defs"].values()]
    missing = [
        f"{obj.get('title')}.{name}"
        for obj in objects
        for name, prop in obj.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert missing == []


def test_default_applies_when_the_variable_is_set_but_empty() -> None:
    data, problems = interpolate({"v": "${X:-fallback}", "w": "${Y:-fb}"}, {"X": "", "Y": "y"}, "f")
    assert problems == []
    assert data == {"v": "fallback", "w": "y"}


def test_check_warns_about_risky_settings_and_still_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "risky.yaml"
    file.write_text(
        textwrap.dedent(
            """\
            version: 1
            upstreams:
              far: {url: "http://10.1.2.3:80"}
              near: {url: "http://127.0.0.1:9"}
              safe: {url: "https://10.1.2.3"}
            endpoints:
              - path: /a
                deadline: 500ms
                backends:
                  - {name: a, upstream: near, path: /a, timeout: 2s, required: true, default: {}}
                  - {name: b, upstream: safe, path: /b, timeout: 100ms}
            """
        )
    )
    assert main(["check", str(file)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{file}: upstreams.far.url: warning: plain http to a host that is not loopback: "
        "traffic and credentials cross the network unencrypted",
        f"{file}: endpoints[0].backends[0].timeout: warning: timeout 2s is longer than the "
        "endpoint's deadline 500ms (from endpoints[0].deadline); the deadline always cuts it "
        "first",
        f"{file}: endpoints[0].backends[0].default: warning: a required backend's default is "
        "never used (its failure fails the request)",
    ]
    assert "OK: 1 endpoint(s)" in out


CACHED = """\
version: 1
upstreams:
  u: {url: "http://127.0.0.1:9"}
endpoints:
"""


def warnings_of(endpoints: str) -> list[str]:
    plan = load_config("c.yaml", {}, text=CACHED + textwrap.indent(endpoints, "  "))
    return [str(w) for w in plan.warnings]


def test_check_warns_when_an_explicit_cache_key_leaves_out_a_value_the_endpoint_reads() -> None:
    assert warnings_of(
        textwrap.dedent(
            """\
            - path: /a/{id}
              forward_headers: [Accept-Language]
              forward_query: [page]
              cache: {ttl: 5s, key: [path.id, query.page]}
              backends:
                - name: a
                  upstream: u
                  path: /a/{id}?lang={query.lang}
                  headers: {X-Tenant: "{header.X-Tenant}"}
                  when: {header: X-Beta}
            """
        )
    ) == [
        "c.yaml: endpoints[0].cache.key: warning: leaves out query.lang, "
        "header.accept-language, header.x-beta, header.x-tenant, which the endpoint reads: "
        "requests that differ only there share one cached answer"
    ]


def test_a_default_cache_key_or_one_naming_every_read_value_gives_no_warning() -> None:
    endpoint = """\
        - path: /a/{id}
          forward_headers: [X-Tenant]
          cache: %s
          backends: [{name: a, upstream: u, path: "/a/{id}?lang={query.lang}"}]
        """
    for cache in ("{ttl: 5s}", "{ttl: 5s, key: [path.id, query.lang, header.X-Tenant]}"):
        assert warnings_of(textwrap.dedent(endpoint % cache)) == []


def test_check_warns_when_credentials_the_endpoint_sends_would_bypass_its_cache() -> None:
    endpoint = """\
        - path: /me
          forward_headers: [Cookie]
          cache: %s
          backends:
            - {name: me, upstream: u, path: /me, headers: {Authorization: "{header.Authorization}"}}
        """
    default = warnings_of(textwrap.dedent(endpoint % "{ttl: 5s}"))
    assert default == [
        "c.yaml: endpoints[0].cache: warning: the endpoint reads the client's authorization (a "
        "template, a when: condition or forward_headers) but cache.key does not name "
        "header.authorization: every request carrying it bypasses the cache",
        "c.yaml: endpoints[0].cache: warning: the endpoint reads the client's cookie (a "
        "template, a when: condition or forward_headers) but cache.key does not name "
        "header.cookie: every request carrying it bypasses the cache",
    ]
    named = "{ttl: 5s, key: [header.Authorization, header.Cookie]}"
    assert warnings_of(textwrap.dedent(endpoint % named)) == []


def test_check_warns_that_an_answer_setting_a_cookie_is_never_cached() -> None:
    assert warnings_of(
        textwrap.dedent(
            """\
            - path: /login
              cache: {ttl: 5s}
              backends: [{name: a, upstream: u, path: /a, return_headers: [Set-Cookie]}]
            """
        )
    ) == [
        "c.yaml: endpoints[0].backends[0].return_headers: warning: a response that sets a "
        "cookie is never stored in the endpoint's cache"
    ]


def test_a_cache_key_header_must_be_a_valid_field_name() -> None:
    text = CACHED + textwrap.indent(
        "- {path: /a, cache: {ttl: 5s, key: [header.X Y]}, "
        "backends: [{name: a, upstream: u, path: /a}]}\n",
        "  ",
    )
    with pytest.raises(ConfigError) as info:
        load_config("c.yaml", {}, text=text)
    assert [str(p) for p in info.value.problems] == [
        "c.yaml: endpoints[0].cache.key[0]: invalid header name"
    ]


def test_upstreams_sharing_an_origin_must_agree_on_pool_settings() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        upstreams:
          a: {url: "http://127.0.0.1:9001/v1", max_connections: 10}
          b: {url: "http://127.0.0.1:9001/v2", max_connections: 20}
          c: {url: "http://127.0.0.1:9001/v3", max_connections: 10}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: upstreams.b: shares its http://127.0.0.1:9001 pool (no client certificate) "
        "with upstream 'a' but sets different max_connections, idle_timeout, ca_file or "
        "host_header (one pool per origin and client certificate)"
    ]


def test_upstreams_sharing_an_https_pool_must_agree_on_the_tls_server_name() -> None:
    """host_header sets the TLS server name of the pool's connections: two upstreams on
    one pool cannot each have their own."""
    text = textwrap.dedent(
        """\
        version: 1
        upstreams:
          a: {url: "https://127.0.0.1:9443/v1", host_header: a.internal}
          b: {url: "https://127.0.0.1:9443/v2", host_header: b.internal}
          c: {url: "https://127.0.0.1:9443/v3", host_header: a.internal}
        """
    )
    assert problems_of(text) == [
        "gw.yaml: upstreams.b: shares its https://127.0.0.1:9443 pool (no client certificate) "
        "with upstream 'a' but sets different max_connections, idle_timeout, ca_file or "
        "host_header (one pool per origin and client certificate)"
    ]


def test_tracing_without_the_otel_extra_is_a_clear_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gateway._config.compile

    monkeypatch.setattr(gateway._config.compile, "otel_available", lambda: False)
    text = "version: 1\ntracing: {otlp_endpoint: 'http://127.0.0.1:4318/v1/traces'}\n"
    assert problems_of(text) == [
        "gw.yaml: tracing: tracing needs the otel extra: "
        "pip install 'trio-aggregation-gateway[otel]'"
    ]


def _hide_modules(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` and every submodule of it unimportable, as if not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def test_tracing_without_the_otel_packages_is_a_config_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes every import of the package fail, as when it is not installed
    # (its submodules too: an earlier test may have imported them)
    _hide_modules(monkeypatch, "opentelemetry")
    text = "version: 1\ntracing: {otlp_endpoint: 'http://127.0.0.1:4318/v1/traces'}\n"
    assert problems_of(text) == [
        "gw.yaml: tracing: tracing needs the otel extra: "
        "pip install 'trio-aggregation-gateway[otel]'"
    ]


def test_tracing_with_the_sdk_but_without_the_exporter_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hide_modules(monkeypatch, "opentelemetry.exporter.otlp.proto.http")
    text = "version: 1\ntracing: {otlp_endpoint: 'http://127.0.0.1:4318/v1/traces'}\n"
    assert problems_of(text) == [
        "gw.yaml: tracing: tracing needs the otel extra: "
        "pip install 'trio-aggregation-gateway[otel]'"
    ]


# the gateway's command line in a process where the otel packages cannot be imported
_WITHOUT_OTEL = (
    "import sys; sys.modules['opentelemetry'] = None; "
    "from gateway._cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("command", ["check", "serve"])
def test_tracing_without_the_otel_extra_exits_2_from_check_and_serve(
    tmp_path: Path, command: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "version: 1\nserver: {bind: '127.0.0.1:0'}\n"
        "tracing: {otlp_endpoint: 'http://127.0.0.1:4318/v1/traces'}\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTEL, command, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"{path}: tracing: tracing needs the otel extra: "
        "pip install 'trio-aggregation-gateway[otel]'\n"
    )


def _timeout_warnings(text: str) -> list[str]:
    plan = load_config("gw.yaml", {}, text=yaml_doc(text))
    return [str(w) for w in plan.warnings if "deadline always cuts" in w.message]


def test_timeout_warning_names_the_built_in_default_it_comes_from() -> None:
    warnings = _timeout_warnings(
        """
        version: 1
        upstreams:
          u: {url: "http://127.0.0.1:9"}
        endpoints:
          - path: /a
            deadline: 1s
            backends:
              - {name: a, upstream: u, path: /a}
        """
    )
    assert warnings == [
        "gw.yaml: endpoints[0].backends[0]: warning: timeout 2s (from the built-in default) "
        "is longer than the endpoint's deadline 1s (from endpoints[0].deadline); the deadline "
        "always cuts it first"
    ]


def test_timeout_warning_names_the_upstream_timeout_and_defaults_deadline() -> None:
    warnings = _timeout_warnings(
        """
        version: 1
        defaults: {deadline: 1s}
        upstreams:
          u: {url: "http://127.0.0.1:9", timeout: 3s}
        endpoints:
          - path: /a
            backends:
              - {name: a, upstream: u, path: /a}
        """
    )
    assert warnings == [
        "gw.yaml: endpoints[0].backends[0]: warning: timeout 3s (from upstreams.u.timeout) "
        "is longer than the endpoint's deadline 1s (from defaults.deadline); the deadline "
        "always cuts it first"
    ]


def test_yaml_reads_only_true_and_false_as_booleans() -> None:
    """YAML 1.2: `on:` (the retries key) stays a string, as do yes/no/off."""
    text = textwrap.dedent(
        """\
        version: 1
        upstreams:
          u:
            url: http://127.0.0.1:9
            retries: {attempts: 1, on: [http_503]}
        """
    )
    config = load_config_text(text, "gw.yaml", {})
    assert config.upstreams["u"].retries is not None
    assert config.upstreams["u"].retries.on == ["http_503"]


@pytest.mark.parametrize(
    ("scalar", "value"),
    [
        ("12:30", "12:30"),  # YAML 1.1: 750 (base 60)
        ("1e3", 1000.0),  # YAML 1.1: a string
        ("-1.5E-2", -0.015),
        (".5", 0.5),
        ("0x1F", 31),
        ("0o17", 15),  # YAML 1.1: the string "0o17"
        ("012", 12),  # YAML 1.1: 10 (octal)
        ("+7", 7),
        ("1_000", "1_000"),  # YAML 1.1: 1000
        ("0b11", "0b11"),  # YAML 1.1: 3
        ("=", "="),  # YAML 1.1's "value" type, which the safe loader cannot build
        ("~", None),
        ("yes", "yes"),
    ],
)
def test_every_scalar_of_the_config_is_read_by_yaml_12_core_schema_rules(
    scalar: str, value: Any
) -> None:
    text = one_endpoint(f"- {{name: a, static: {{v: {scalar}, in: [{scalar}]}}}}")
    static = load_config_text(text, "gw.yaml", {}).endpoints[0].backends[0].static
    assert static == {"v": value, "in": [value]}
    assert type(static["v"]) is type(value)  # 1000.0, not 1000


def test_non_finite_numbers_and_unquoted_references_are_config_problems_at_their_path() -> None:
    text = one_endpoint(
        "- {name: a, static: {x: .inf, y: [-.Inf, .NaN]}, default: {z: .nan}}\n"
        "- name: b\n"
        "  upstream: users\n"
        "  path: /b\n"
        "  method: POST\n"
        "  body: {template: {n: {body.x}, d: 2024-01-01, ok: {a: null}}}",
        endpoint_extra="method: POST\n",
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].static.x: .inf is not a JSON number: JSON has no "
        "infinity or NaN",
        "gw.yaml: endpoints[0].backends[0].static.y[0]: -.Inf is not a JSON number: JSON has no "
        "infinity or NaN",
        "gw.yaml: endpoints[0].backends[0].static.y[1]: .NaN is not a JSON number: JSON has no "
        "infinity or NaN",
        "gw.yaml: endpoints[0].backends[0].default.z: .nan is not a JSON number: JSON has no "
        "infinity or NaN",
        "gw.yaml: endpoints[0].backends[1].body.template.n: {body.x} without quotes is a YAML "
        'mapping (body.x: null): write "{body.x}" for a reference, or body.x: null',
        # pydantic's union member tags (dict, list) are not part of the path
        "gw.yaml: endpoints[0].backends[1].body.template.d: a date is not a JSON value (quote it)",
    ]


@pytest.mark.parametrize(
    ("upstream", "problem"),
    [
        ("{}", "upstreams.a: give exactly one of url and urls"),
        (
            '{url: "http://127.0.0.1:1", urls: ["http://127.0.0.1:2"]}',
            "upstreams.a: give exactly one of url and urls",
        ),
        (
            "{urls: []}",
            "upstreams.a.urls: List should have at least 1 item after validation, not 0",
        ),
        (
            '{urls: ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v2"]}',
            "upstreams.a.urls[1]: every url of an upstream needs the same scheme and base path",
        ),
        (
            '{urls: ["http://127.0.0.1:1", "https://127.0.0.1:2"]}',
            "upstreams.a.urls[1]: every url of an upstream needs the same scheme and base path",
        ),
        (
            '{urls: ["http://127.0.0.1:1", "http://127.0.0.1:1/"]}',
            "upstreams.a.urls[1]: listed twice",
        ),
        (
            '{urls: ["http://127.0.0.1:1", "ftp://x"]}',
            "upstreams.a.urls[1]: scheme must be http or https",
        ),
        (
            '{urls: ["http://127.0.0.1:1"], balance: random}',
            "upstreams.a.balance: Input should be 'round_robin' or 'least_outstanding'",
        ),
    ],
)
def test_upstream_hosts_are_checked(upstream: str, problem: str) -> None:
    text = f"version: 1\nupstreams:\n  a: {upstream}\n"
    assert problems_of(text) == [f"gw.yaml: {problem}"]


def test_several_hosts_compile_in_order_and_pool_per_host() -> None:
    from gateway._app import build_guards, pool_limits

    plan = load_config(
        "gw.yaml",
        text=textwrap.dedent(
            """\
            version: 1
            upstreams:
              a:
                urls: ["http://127.0.0.1:9001/v1", "http://127.0.0.2:9002/v1"]
                balance: least_outstanding
                outlier_detection: {consecutive_failures: 3, ejection: 5s, max_ejected: 100%}
            endpoints:
              - path: /x
                backends:
                  - {name: p, upstream: a, path: /p}
                  - {name: q, upstream: a, path: /q, retries: {attempts: 1}, bulkhead: null}
            """
        ),
    )
    up = plan.upstreams["a"]
    assert [h.origin for h in up.all_hosts] == ["http://127.0.0.1:9001", "http://127.0.0.2:9002"]
    assert up.base is up.all_hosts[0] and up.balance == "least_outstanding"
    assert (up.outlier.consecutive_failures, up.outlier.ejection_s) == (3, 5.0)
    assert set(pool_limits(plan)) == {
        ("http", "127.0.0.1", 9001, None),
        ("http", "127.0.0.2", 9002, None),
    }
    p, q = plan.endpoints[0].backends
    assert p.guard is None and p.guard_name == "a"
    assert q.guard is not None and q.guard.retry is not None and q.guard.retry.attempts == 1
    assert (q.own_breaker, q.own_bulkhead) == (False, True)
    guards = build_guards(plan, {})
    assert set(guards) == {"a", q.guard_key}
    assert guards[q.guard_key].hosts is guards["a"].hosts  # one balancer per upstream
    assert guards[q.guard_key].budget is guards["a"].budget
    # a reload with the same settings keeps the state
    again = build_guards(plan, guards)
    assert again["a"] is guards["a"] and again[q.guard_key] is guards[q.guard_key]


def test_numbers_json_cannot_carry_exactly_are_config_problems_at_their_path() -> None:
    """A static value answered as is must be one JSON can carry: 1e400 would be served as
    null, an integer beyond 64 bits would make every answer fail."""
    text = one_endpoint(
        "- {name: a, static: {big: 99999999999999999999999, low: -9223372036854775809,"
        " huge: 1e400, ok: [18446744073709551615, -9223372036854775808, 1e300]}}"
    )
    assert problems_of(text) == [
        "gw.yaml: endpoints[0].backends[0].static.big: 99999999999999999999999 is an integer "
        "beyond 64 bits, which JSON parsers read inexactly (RFC 7493 section 2.2): quote it "
        "to send a string",
        "gw.yaml: endpoints[0].backends[0].static.low: -9223372036854775809 is an integer "
        "beyond 64 bits, which JSON parsers read inexactly (RFC 7493 section 2.2): quote it "
        "to send a string",
        "gw.yaml: endpoints[0].backends[0].static.huge: 1e400 is not a JSON number: JSON has "
        "no infinity or NaN (and this one is beyond a double's range)",
    ]
