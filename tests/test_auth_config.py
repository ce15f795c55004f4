"""The `auth:` section and endpoints' `auth`: what loads, and every problem with its path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway._auth.plan import ApiKeyPolicy, ForwardPolicy, JwtPolicy
from gateway._config.compile import load_config
from gateway._errors import ConfigError

SECRET = "s" * 32


def config(
    auth: dict[str, Any],
    *,
    endpoint: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "version": 1,
        "defaults": defaults or {},
        "upstreams": {"users": {"url": "http://127.0.0.1:9001"}},
        "auth": auth,
        "endpoints": [
            {
                "path": "/a",
                "backends": [{"name": "a", "upstream": "users", "path": "/a", **(backend or {})}],
                **(endpoint or {}),
            }
        ],
    }


def problems_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config("gw.yaml", {}, text=json.dumps(doc))
    return [str(p) for p in caught.value.problems]


def load(doc: dict[str, Any]) -> Any:
    return load_config("gw.yaml", {}, text=json.dumps(doc))


def keys_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "keys.txt"
    path.write_text(text)
    return str(path)


def test_policies_compile_into_the_endpoint_plan(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"k1").hexdigest()
    doc = config(
        {
            "users": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}},
            "partners": {"api_key": {"keys_file": keys_file(tmp_path, f"# ours\nacme {digest}\n")}},
            "sso": {"forward": {"upstream": "users", "path": "/verify"}},
        },
        endpoint={"auth": ["users", "partners", "sso"]},
    )
    policies = load(doc).endpoints[0].auth.policies
    assert [type(p) for p in policies] == [JwtPolicy, ApiKeyPolicy, ForwardPolicy]
    assert policies[1].digests == (("acme", digest.encode()),)
    assert policies[2].target == "/verify"
    assert SECRET not in repr(policies[0])  # secrets stay out of logs


def test_defaults_auth_applies_and_auth_null_opts_out() -> None:
    doc = config({"users": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}})
    doc["defaults"] = {"auth": "users"}
    doc["endpoints"].append({**doc["endpoints"][0], "path": "/open", "auth": None})
    plan = load(doc)
    assert plan.endpoints[0].auth.names == ("users",)
    assert plan.endpoints[1].auth is None


@pytest.mark.parametrize(
    ("jwt", "expected"),
    [
        (
            {"secret": SECRET, "algorithms": ["none"]},
            "auth.u.jwt.algorithms[0]: `none` means an unsigned token: never accepted",
        ),
        (
            {"jwks_url": "http://idp/jwks", "algorithms": ["HS256"]},
            "auth.u.jwt.algorithms[0]: HS256 needs a secret",
        ),
        (
            {"secret": SECRET, "algorithms": ["RS256"]},
            "auth.u.jwt.algorithms[0]: RS256 needs jwks_url or jwks_file, not secret",
        ),
        ({"secret": "short", "algorithms": ["HS256"]}, "auth.u.jwt.secret: HS256 needs a secret"),
        (
            {"secret": SECRET, "jwks_url": "http://idp/jwks"},
            "auth.u.jwt: give exactly one of jwks_url, jwks_file and secret",
        ),
        (
            {"secret": SECRET, "algorithms": ["HS256"], "token_from": ["body.token"]},
            "auth.u.jwt.token_from[0]: must be header.NAME, cookie.NAME or query.NAME",
        ),
    ],
)
def test_jwt_settings_that_cannot_be_verified_safely_are_refused(
    jwt: dict[str, Any], expected: str
) -> None:
    (problem,) = problems_of(config({"u": {"jwt": jwt}}))
    assert problem.startswith("gw.yaml: " + expected)


def test_a_policy_needs_exactly_one_kind(tmp_path: Path) -> None:
    doc = config(
        {
            "none": {},
            "two": {
                "jwt": {"secret": SECRET, "algorithms": ["HS256"]},
                "api_key": {"keys_file": keys_file(tmp_path, "")},
            },
        }
    )
    assert problems_of(doc) == [
        "gw.yaml: auth.none: give exactly one of jwt, api_key and forward",
        "gw.yaml: auth.two: give exactly one of jwt, api_key and forward (found jwt, api_key)",
    ]


def test_unknown_policy_names_are_problems() -> None:
    doc = config({"users": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}})
    doc["endpoints"][0]["auth"] = ["users", "partner"]
    doc["defaults"] = {"auth": "nobody"}
    assert problems_of(doc) == [
        "gw.yaml: defaults.auth: unknown auth policy 'nobody' (known: users)",
        "gw.yaml: endpoints[0].auth: unknown auth policy 'partner' (known: users)",
    ]


def test_a_bad_keys_file_line_is_a_problem_with_its_line_number(tmp_path: Path) -> None:
    path = keys_file(tmp_path, f"acme {'a' * 64}\n\nplain-key-here\nbeta {'b' * 63}\n")
    doc = config({"p": {"api_key": {"keys_file": path}}})
    problems = problems_of(doc)
    assert [p.split(": ")[1] for p in problems] == ["line 3", "line 4"]
    assert all(p.startswith(path) and "never the key itself" in p for p in problems)


def test_a_missing_keys_file_is_a_problem(tmp_path: Path) -> None:
    doc = config({"p": {"api_key": {"keys_file": str(tmp_path / "nope")}}})
    (problem,) = problems_of(doc)
    assert problem.startswith("gw.yaml: auth.p.api_key.keys_file: cannot read")


def test_forward_auth_needs_a_known_upstream() -> None:
    doc = config({"sso": {"forward": {"upstream": "auth", "path": "/verify"}}})
    assert problems_of(doc) == [
        "gw.yaml: auth.sso.forward.upstream: unknown upstream 'auth' (known: users)"
    ]


def test_require_is_only_for_jwt(tmp_path: Path) -> None:
    doc = config({"sso": {"forward": {"upstream": "users"}, "require": {"roles": ["admin"]}}})
    (problem,) = problems_of(doc)
    assert problem.startswith("gw.yaml: auth.sso.require: roles and scopes are read from a JWT")


def test_jwt_references_need_a_jwt_policy(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    doc = config(
        {"p": {"api_key": {"keys_file": keys_file(tmp_path, f"acme {digest}\n")}}},
        endpoint={"auth": "p"},
        backend={"path": "/a/{jwt.sub}", "headers": {"X-Key": "{apikey.name}"}},
    )
    assert problems_of(doc) == [
        "gw.yaml: endpoints[0].backends[0].path: {jwt.sub} needs a jwt policy in the endpoint's auth"
    ]


def test_api_key_references_need_an_api_key_policy() -> None:
    doc = config(
        {"u": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}},
        endpoint={"auth": "u"},
        backend={"headers": {"X-Key": "{apikey.name}", "X-User": "{jwt.org.id}"}},
    )
    assert problems_of(doc) == [
        "gw.yaml: endpoints[0].backends[0].headers.X-Key: {apikey.name} needs an api_key "
        "policy in the endpoint's auth"
    ]


def test_rate_limit_per_claim_needs_a_jwt_policy() -> None:
    doc = config({}, endpoint={"rate_limit": {"rate": "1/s", "key": "jwt:sub"}})
    (problem,) = problems_of(doc)
    assert problem.startswith("gw.yaml: endpoints[0].rate_limit.key: jwt:sub counts per claim")


def test_backend_names_jwt_and_apikey_are_reserved() -> None:
    doc = config({}, backend={"name": "jwt"})
    (problem,) = problems_of(doc)
    assert "reserved" in problem


def test_an_endpoint_with_auth_keys_its_cache_by_identity_not_by_bypassing() -> None:
    doc = config(
        {"u": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}},
        endpoint={"auth": "u", "cache": {"ttl": "10s"}},
    )
    assert load(doc).endpoints[0].cache.bypass_headers == frozenset()


def test_the_admin_config_view_masks_hmac_secrets() -> None:
    from gateway._app import MASK, masked_config

    plan = load(config({"u": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}}))
    assert masked_config(plan)["auth"]["u"]["jwt"]["secret"] == MASK
    assert SECRET not in json.dumps(masked_config(plan))


def test_a_policy_left_out_for_its_own_problems_is_not_also_unknown() -> None:
    doc = config(
        {"users": {"jwt": {"secret": SECRET, "bogus": 1}}},
        endpoint={"auth": "users"},
    )
    (problem,) = problems_of(doc)
    assert problem.startswith("gw.yaml: auth.users.jwt.bogus: unknown key 'bogus'")


def test_an_empty_policy_list_is_refused_rather_than_leaving_an_endpoint_open() -> None:
    """`auth: []` would require no policy at all; opting out is written `auth: null`."""
    jwt = {"j": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}}
    message = (
        "an empty list would leave the endpoint open: name a policy, or write `auth: null` "
        "to opt out"
    )
    assert problems_of(config(jwt, endpoint={"auth": []}, defaults={"auth": "j"})) == [
        f"gw.yaml: endpoints[0].auth: {message}"
    ]
    assert problems_of(config(jwt, defaults={"auth": []})) == [f"gw.yaml: defaults.auth: {message}"]


def test_a_policy_left_out_for_its_own_problems_brings_no_second_problem(tmp_path: Path) -> None:
    """A bad keys file is reported once: the endpoint's `{apikey.name}` is not also called
    unfillable because the policy it names could not be compiled."""
    path = keys_file(tmp_path, "broken\n")
    doc = config(
        {"partners": {"api_key": {"keys_file": path}}},
        endpoint={"auth": "partners"},
        backend={"headers": {"X-Partner": "{apikey.name}"}},
    )
    problems = problems_of(doc)
    assert len(problems) == 1, problems
    assert "line 1" in problems[0] and "NAME SHA256-HEX" in problems[0]
