"""The aggregate (endpoint-level) cache never mixes clients: through a running gateway
over real upstreams, and as properties of its pure key function.

The gateway is a shared cache (RFC 9111 section 1): its key must hold every request value
the endpoint reads, a request with credentials the key does not name is never served from
it (section 3.5), a response that cannot be shared is never stored, and an incomplete
answer is sent so that no cache downstream keeps it either.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import trio
from conftest import backend_config, recorder, simple_config, start_gateway, start_upstream
from hypothesis import given, settings
from hypothesis import strategies as st
from upstream import RecordedRequest, Reply

from gateway import load_config
from gateway._config.plan import EndpointPlan
from gateway._state.shared import bypasses_cache, endpoint_cache_key

# --- the key holds every value the endpoint reads ----------------------------------------


def whoami(req: RecordedRequest) -> Reply:
    return Reply(json={"user": req.headers.get("authorization", "")})


async def test_a_templated_authorization_is_never_answered_from_another_users_entry(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(whoami)
        up = await start_upstream(nursery, handler)
        me = backend_config("me", "u", "/me", headers={"Authorization": "{header.Authorization}"})
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [me], path="/me", cache={"ttl": "30s"})
        )
        alice = await gw.get("/me", headers={"authorization": "Bearer alice"})
        assert alice.status_code == 200 and alice.json()["user"] == "Bearer alice"
        assert alice.headers["x-cache"] == "bypass"
        mallory = await gw.get("/me", headers={"authorization": "Bearer mallory"})
        assert mallory.json()["user"] == "Bearer mallory"
        assert mallory.headers["x-cache"] == "bypass"
        anonymous = await gw.get("/me")  # the template cannot be filled: no one's data
        assert anonymous.status_code == 400 and "alice" not in anonymous.text
        assert anonymous.json()["error"]["code"] == "invalid_header"
        assert "x-cache" not in anonymous.headers  # refused before the cache is asked
        assert len(seen) == 2


async def test_a_key_that_names_authorization_caches_each_user_apart(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(whoami)
        up = await start_upstream(nursery, handler)
        me = backend_config("me", "u", "/me", headers={"Authorization": "{header.Authorization}"})
        cache = {"ttl": "30s", "key": ["header.Authorization"]}
        gw = await start_gateway(nursery, simple_config({"u": up}, [me], path="/me", cache=cache))
        asks = ["Bearer alice", "Bearer alice", "Bearer mallory", "Bearer alice"]
        answers = [await gw.get("/me", headers={"authorization": token}) for token in asks]
        assert [r.json()["user"] for r in answers] == asks
        assert [r.headers["x-cache"] for r in answers] == ["miss", "hit", "miss", "hit"]
        assert len(seen) == 2


async def test_a_header_condition_is_part_of_the_default_key(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/a": Reply(json={"a": 1}), "/beta": Reply(json={"beta": True})}
        )
        backends = [
            backend_config("a", "u", "/a"),
            backend_config("beta", "u", "/beta", when={"header": "X-Beta"}),
        ]
        gw = await start_gateway(nursery, simple_config({"u": up}, backends, cache={"ttl": "30s"}))
        with_beta = await gw.get("/api/1", headers={"x-beta": "1"})
        assert with_beta.headers["x-gateway-backends"] == "a=ok, beta=ok"
        without = await gw.get("/api/1")
        assert without.headers["x-cache"] == "miss"
        assert without.headers["x-gateway-backends"] == "a=ok, beta=skipped"
        assert without.json() == {"a": 1}
        again = await gw.get("/api/1", headers={"x-beta": "1"})
        assert again.headers["x-cache"] == "hit" and again.json() == {"a": 1, "beta": True}


async def test_a_request_with_a_cookie_bypasses_the_cache(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(lambda req: Reply(json={"n": 1}))
        up = await start_upstream(nursery, handler)
        config = simple_config({"u": up}, [backend_config("a", "u", "/a")], cache={"ttl": "30s"})
        gw = await start_gateway(nursery, config)
        asks = [{"cookie": "session=alice"}, {}, {}, {"cookie": "session=alice"}]
        caches = [(await gw.get("/api/1", headers=h)).headers["x-cache"] for h in asks]
        assert caches == ["bypass", "miss", "hit", "bypass"]
        assert len(seen) == 3


# --- responses that cannot be shared are never stored ------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Set-Cookie", "session=s3cret; HttpOnly"),
        ("Cache-Control", "private, max-age=60"),
        ("Cache-Control", "no-store"),
        ("Cache-Control", "no-cache"),
        ("Vary", "*"),
    ],
)
async def test_an_answer_that_cannot_be_shared_is_never_stored(
    nursery: trio.Nursery, field: str, value: str
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(lambda req: Reply(json={"n": len(seen)}, headers=[(field, value)]))
        up = await start_upstream(nursery, handler)
        backend = backend_config("a", "u", "/a", return_headers=[field])
        gw = await start_gateway(nursery, simple_config({"u": up}, [backend], cache={"ttl": "30s"}))
        first = await gw.get("/api/1")
        gw.client.cookies.clear()  # the second request is another client's
        second = await gw.get("/api/1")
        if field == "Cache-Control":  # kept by no cache downstream either
            assert first.headers.get_list(field) == ["no-store"]
        else:
            assert first.headers[field] == value
        assert [first.headers["x-cache"], second.headers["x-cache"]] == ["miss", "miss"]
        assert [first.json(), second.json()] == [{"n": 1}, {"n": 2}]
        assert len(seen) == 2


async def test_an_answer_that_may_be_shared_is_stored_with_its_returned_fields(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        seen, handler = recorder(
            lambda req: Reply(json={"n": 1}, headers=[("Cache-Control", "max-age=60")])
        )
        up = await start_upstream(nursery, handler)
        backend = backend_config("a", "u", "/a", return_headers=["Cache-Control"])
        gw = await start_gateway(nursery, simple_config({"u": up}, [backend], cache={"ttl": "30s"}))
        await gw.get("/api/1")
        hit = await gw.get("/api/1")
        assert hit.headers["x-cache"] == "hit"
        assert hit.headers.get_list("cache-control") == ["max-age=60"]
        assert len(seen) == 1


# --- an incomplete answer is kept by no one ----------------------------------------------

FRESH = [
    ("Cache-Control", "max-age=600"),
    ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
    ("CDN-Cache-Control", "max-age=3600"),
    ("ETag", '"v1"'),
]


async def test_an_incomplete_answer_is_sent_with_no_store_only(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/fresh": Reply(json={"a": 1}, headers=FRESH), "/down": Reply(status=500)}
        )
        returned = ["Cache-Control", "Expires", "CDN-Cache-Control", "ETag"]
        backends = [
            backend_config("fresh", "u", "/fresh", return_headers=returned),
            backend_config("down", "u", "/down"),
        ]
        config = simple_config({"u": up}, backends)
        config["endpoints"].append(
            {
                "path": "/cached/{id}",
                "cache": {"ttl": "30s"},
                "backends": backends,
            }
        )
        gw = await start_gateway(nursery, config)
        for path in ("/api/1", "/cached/1", "/cached/1"):
            r = await gw.get(path)
            assert r.status_code == 200 and r.headers["x-gateway-complete"] == "false"
            assert r.headers.get_list("cache-control") == ["no-store"]
            assert "expires" not in r.headers and "cdn-cache-control" not in r.headers
            assert "etag" not in r.headers  # a backend's validator is not the answer's
            assert r.headers.get("x-cache", "miss") == "miss"


async def test_a_failed_answer_is_sent_with_no_store(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/fresh": Reply(json={"a": 1}, headers=FRESH), "/down": Reply(status=500)}
        )
        backends = [
            backend_config("fresh", "u", "/fresh", return_headers=["Cache-Control"]),
            backend_config("down", "u", "/down", required=True),
        ]
        gw = await start_gateway(nursery, simple_config({"u": up}, backends))
        r = await gw.get("/api/1")
        assert r.status_code == 502
        assert r.headers.get_list("cache-control") == ["no-store"]


# --- properties of the key function --------------------------------------------------------


def reading_endpoint(key: list[str] | None) -> EndpointPlan:
    """An endpoint that reads a value from every source: a path parameter, query values
    (templated, tested, forwarded) and headers (templated, tested, forwarded)."""
    backends = [
        backend_config(
            "a", "u", "/a/{id}?lang={query.lang}", headers={"X-Tenant": "{header.X-Tenant}"}
        ),
        backend_config("b", "u", "/b", when=[{"query": "beta"}, {"header": "X-Beta"}]),
    ]
    config = {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [
            {
                "path": "/api/{id}",
                "backends": backends,
                "forward_headers": ["Accept-Language"],
                "forward_query": ["page"],
                "cache": {"ttl": "30s", **({"key": key} if key is not None else {})},
            }
        ],
    }
    return load_config("p.yaml", {}, text=json.dumps(config)).endpoints[0]


EVERY_READ = [
    "path.id",
    "query.lang",
    "query.beta",
    "query.page",
    "header.X-Tenant",
    "header.X-Beta",
    "header.Accept-Language",
]
ENDPOINTS = {
    "default key": reading_endpoint(None),
    "key of every read": reading_endpoint(EVERY_READ),
}

HEADER_NAMES = ["x-tenant", "X-Tenant", "x-beta", "accept-language", "x-other", "user-agent"]
QUERY_NAMES = ["lang", "beta", "page", "other"]
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=4)


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes, list[tuple[bytes, bytes]]]:
    params = {"id": draw(st.text(min_size=1, max_size=4))}
    query = draw(st.lists(st.tuples(st.sampled_from(QUERY_NAMES), values), max_size=4))
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), values), max_size=4))
    raw_headers = [(n.lower().encode(), v.encode("latin-1")) for n, v in headers]
    return params, urlencode(query).encode(), raw_headers


def key_of(
    endpoint: EndpointPlan, request: tuple[dict[str, str], bytes, list[tuple[bytes, bytes]]]
) -> str:
    params, query_string, headers = request
    query: dict[str, list[str]] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        query.setdefault(name, []).append(value)
    return endpoint_cache_key(endpoint, params, query_string, query, headers)


def what_is_read(
    request: tuple[dict[str, str], bytes, list[tuple[bytes, bytes]]],
) -> tuple[Any, ...]:
    """Every value ``reading_endpoint`` reads, as its templates, conditions and forwarding
    see them."""
    params, query_string, headers = request
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    query = tuple(tuple(v for n, v in pairs if n == name) for name in ("lang", "beta", "page"))
    fields = tuple(
        tuple(v for n, v in headers if n == name)
        for name in (b"x-tenant", b"x-beta", b"accept-language")
    )
    return params["id"], query, tuple(b", ".join(f) if f else None for f in fields)


@pytest.mark.parametrize("endpoint", ENDPOINTS.values(), ids=ENDPOINTS.keys())
@settings(max_examples=300)
@given(requests(), requests())
def test_requests_that_differ_in_a_read_value_never_share_a_key(
    endpoint: EndpointPlan,
    one: tuple[dict[str, str], bytes, list[tuple[bytes, bytes]]],
    other: tuple[dict[str, str], bytes, list[tuple[bytes, bytes]]],
) -> None:
    if what_is_read(one) != what_is_read(other):
        assert key_of(endpoint, one) != key_of(endpoint, other)


@settings(max_examples=200)
@given(requests(), st.lists(st.tuples(st.sampled_from(["x-other", "user-agent"]), values)))
def test_values_the_endpoint_does_not_read_do_not_split_the_default_key(
    request: tuple[dict[str, str], bytes, list[tuple[bytes, bytes]]],
    unread: list[tuple[str, str]],
) -> None:
    endpoint = ENDPOINTS["default key"]
    params, query_string, headers = request
    kept = [(n, v) for n, v in headers if n not in (b"x-other", b"user-agent")]
    extra = [(n.encode(), v.encode("latin-1")) for n, v in unread]
    assert key_of(endpoint, (params, query_string, kept)) == key_of(
        endpoint, (params, query_string, kept + extra)
    )


def test_credentials_bypass_unless_the_key_names_them() -> None:
    default = ENDPOINTS["default key"]
    assert bypasses_cache(default, [(b"authorization", b"Bearer a")])
    assert bypasses_cache(default, [(b"Cookie", b"s=1")])
    assert not bypasses_cache(default, [(b"x-tenant", b"t")])
    named = reading_endpoint(["path.id", "header.Authorization"])
    assert not bypasses_cache(named, [(b"authorization", b"Bearer a")])
    assert bypasses_cache(named, [(b"authorization", b"Bearer a"), (b"cookie", b"s=1")])


# --- found by trying it as a user: the kind around each fault ----------------------------


def echo_forwarding(req: RecordedRequest) -> Reply:
    return Reply(
        json={
            "host": req.headers.get("x-forwarded-host"),
            "proto": req.headers.get("x-forwarded-proto"),
        },
        headers=[("Cache-Control", "max-age=60")],
    )


@pytest.mark.parametrize("layer", ["endpoint", "backend"])
async def test_a_clients_host_never_poisons_anothers_cached_answer(
    nursery: trio.Nursery, layer: str
) -> None:
    """The gateway sends the client's Host upstream as X-Forwarded-Host (an upstream may
    build links from it): both caches key on it, so ``Host: evil.example`` is stored
    apart from everyone else's answer."""
    with trio.fail_after(10):
        seen, handler = recorder(echo_forwarding)
        up = await start_upstream(nursery, handler)
        if layer == "endpoint":
            config = simple_config(
                {"u": up}, [backend_config("b", "u", "/x")], cache={"ttl": "30s"}
            )
        else:
            config = simple_config(
                {"u": up}, [backend_config("b", "u", "/x", cache={"ttl": "30s"})]
            )
        gw = await start_gateway(nursery, config)
        evil = await gw.get("/api/1", headers={"host": "evil.example"})
        assert evil.json()["host"] == "evil.example"
        normal = await gw.get("/api/1")
        assert normal.json()["host"] != "evil.example"
        again = await gw.get("/api/1")  # the normal answer is cached as usual
        assert again.json() == normal.json()
        assert len(seen) == 2
        if layer == "endpoint":
            assert [
                evil.headers["x-cache"],
                normal.headers["x-cache"],
                again.headers["x-cache"],
            ] == [
                "miss",
                "miss",
                "hit",
            ]
        else:
            assert again.headers["x-gateway-backends"] == "b=ok;cache=hit"


@pytest.mark.parametrize(
    "reply_headers",
    [
        [("Cache-Control", "no-store")],
        [("Cache-Control", "private, max-age=60")],
        [("Set-Cookie", "sid=1")],
        [("Cache-Control", "no-cache")],
        [("Vary", "*")],
    ],
)
async def test_an_answer_made_of_an_unshareable_reply_is_never_stored(
    nursery: trio.Nursery, reply_headers: list[tuple[str, str]]
) -> None:
    """Whether or not the backend returns those headers to the client: its data is meant
    for one client, so the merged answer is not kept for others."""
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {"/mine": Reply(json={"mine": 1}, headers=reply_headers), "/pub": Reply(json={"p": 1})},
        )
        config = simple_config(
            {"u": up},
            [backend_config("mine", "u", "/mine"), backend_config("pub", "u", "/pub")],
            cache={"ttl": "30s"},
        )
        gw = await start_gateway(nursery, config)
        first, second = [await gw.get("/api/1") for _ in range(2)]
        assert [first.headers["x-cache"], second.headers["x-cache"]] == ["miss", "miss"]
        assert up.calls("/mine") == 2


async def test_a_later_backends_max_age_never_lifts_an_earlier_ones_private(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/priv": Reply(json={"priv": 1}, headers=[("Cache-Control", "private")]),
                "/pub": Reply(json={"pub": 1}, headers=[("Cache-Control", "max-age=60")]),
            },
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("priv", "u", "/priv", return_headers=["Cache-Control"]),
                backend_config("pub", "u", "/pub", return_headers=["Cache-Control"]),
            ],
            cache={"ttl": "30s"},
        )
        gw = await start_gateway(nursery, config)
        first, second = [await gw.get("/api/1") for _ in range(2)]
        # private data: kept by no cache, here or downstream
        assert first.headers.get_list("cache-control") == ["no-store"]
        assert [first.headers["x-cache"], second.headers["x-cache"]] == ["miss", "miss"]


async def test_every_backends_cookie_is_returned(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/a": Reply(json={"a": 1}, headers=[("Set-Cookie", "a=1")]),
                "/b": Reply(json={"b": 1}, headers=[("Set-Cookie", "b=2")]),
            },
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("a", "u", "/a", return_headers=["Set-Cookie"]),
                backend_config("b", "u", "/b", return_headers=["Set-Cookie"]),
            ],
        )
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]


async def test_an_incomplete_answer_carries_no_backends_freshness_or_validators(
    nursery: trio.Nursery,
) -> None:
    fields = [
        ("Cache-Control", "max-age=60"),
        ("Expires", "Thu, 01 Dec 2099 16:00:00 GMT"),
        ("CDN-Cache-Control", "max-age=60"),
        ("Cloudflare-CDN-Cache-Control", "max-age=60"),
        ("Surrogate-Control", "max-age=60"),
        ("Edge-Control", "cache-maxage=60m"),
        ("Akamai-Cache-Control", "max-age=60"),
        ("Fastly-Surrogate-Control", "max-age=60"),
        ("X-Accel-Expires", "600"),
        ("ETag", '"v1"'),
        ("Last-Modified", "Thu, 01 Dec 2022 16:00:00 GMT"),
        ("Age", "5"),
        ("X-Kept", "yes"),
    ]
    with trio.fail_after(10):
        up = await start_upstream(
            nursery, {"/ok": Reply(json={"ok": 1}, headers=fields), "/bad": Reply(status=503)}
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("ok", "u", "/ok", return_headers=[n for n, _ in fields]),
                backend_config("bad", "u", "/bad"),
            ],
        )
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-complete"] == "false"
        assert r.headers.get_list("cache-control") == ["no-store"]
        assert r.headers["x-kept"] == "yes"
        for name, _ in fields[1:-1]:
            assert name.lower() not in r.headers, name


@pytest.mark.parametrize(
    "private_headers",
    [
        [("Cache-Control", "private")],
        [("Cache-Control", "no-store")],
        [("Set-Cookie", "sid=1")],
    ],
)
async def test_an_unreturned_private_reply_makes_the_answer_no_store_downstream(
    nursery: trio.Nursery, private_headers: list[tuple[str, str]]
) -> None:
    """Another backend's ``public, max-age`` (and CDN fields) must not tell a CDN to keep
    an answer that holds one client's data, whether or not that reply's own fields are
    returned."""
    with trio.fail_after(10):
        up = await start_upstream(
            nursery,
            {
                "/me": Reply(json={"me": 1}, headers=private_headers),
                "/cat": Reply(
                    json={"cat": 1},
                    headers=[
                        ("Cache-Control", "public, max-age=600"),
                        ("CDN-Cache-Control", "max-age=600"),
                    ],
                ),
            },
        )
        config = simple_config(
            {"u": up},
            [
                backend_config("me", "u", "/me"),
                backend_config(
                    "cat", "u", "/cat", return_headers=["Cache-Control", "CDN-Cache-Control"]
                ),
            ],
        )
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-complete"] == "true"
        assert r.headers.get_list("cache-control") == ["no-store"]
        assert "cdn-cache-control" not in r.headers


async def test_a_service_token_set_in_config_does_not_keep_the_backend_cache_empty(
    nursery: trio.Nursery,
) -> None:
    """RFC 9111 section 3.5 is about a client's credentials: an Authorization the config
    sends on every call (a service token, part of the key) does not make replies private;
    a client's forwarded one does."""
    with trio.fail_after(10):
        seen, handler = recorder(lambda req: Reply(json={"n": 1}))
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config("a", "u", "/a", cache={"ttl": "30s"})],
            forward_headers=["X-Client-Auth"],
        )
        config["upstreams"]["u"]["headers"] = {"Authorization": "Bearer service-token"}
        config["endpoints"].append(
            {
                "path": "/mine",
                "backends": [
                    backend_config(
                        "a",
                        "u",
                        "/mine",
                        cache={"ttl": "30s"},
                        headers={"Authorization": "{header.X-User}"},
                    )
                ],
            }
        )
        gw = await start_gateway(nursery, config)
        _, second = [await gw.get("/api/1") for _ in range(2)]
        assert second.headers["x-gateway-backends"] == "a=ok;cache=hit"
        assert seen[0].headers["authorization"] == "Bearer service-token"
        mine = [await gw.get("/mine", headers={"x-user": "Bearer alice"}) for _ in range(2)]
        assert [r.headers["x-gateway-backends"] for r in mine] == [
            "a=ok;cache=not-stored-authorization"
        ] * 2


async def test_a_reply_to_a_clients_authorization_is_not_stored_and_says_so(
    nursery: trio.Nursery,
) -> None:
    """Without s-maxage, public or must-revalidate, a reply to a request carrying the
    client's Authorization is not stored (RFC 9111 section 3.5): every call reaches the
    upstream, and X-Gateway-Backends and the debug block tell why."""
    with trio.fail_after(10):
        seen, handler = recorder(
            lambda req: Reply(json={"n": 1}, headers=[("Cache-Control", "max-age=60")])
        )
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config("a", "u", "/a", cache={"ttl": "30s"})],
            forward_headers=["Authorization"],
            debug=True,
        )
        gw = await start_gateway(nursery, config)
        answers = [
            await gw.get("/api/1", headers={"authorization": "Bearer alice"}) for _ in range(2)
        ]
        assert len(seen) == 2
        for answer in answers:
            assert answer.headers["x-gateway-backends"] == "a=ok;cache=not-stored-authorization"
            assert answer.json()["_gateway"]["backends"]["a"]["cache"] == (
                "not-stored-authorization"
            )
        # without the client's Authorization the same reply is stored
        plain = [await gw.get("/api/1") for _ in range(2)]
        assert [r.headers["x-gateway-backends"] for r in plain] == ["a=ok", "a=ok;cache=hit"]


@pytest.mark.parametrize(
    "cache_control", ["s-maxage=60", "public, max-age=60", "must-revalidate, max-age=60"]
)
async def test_a_reply_to_a_clients_authorization_that_allows_sharing_is_stored(
    nursery: trio.Nursery, cache_control: str
) -> None:
    """RFC 9111 section 3.5's exceptions: s-maxage, public and must-revalidate let a
    shared cache store it (under a key holding that Authorization)."""
    with trio.fail_after(10):
        seen, handler = recorder(
            lambda req: Reply(json={"n": 1}, headers=[("Cache-Control", cache_control)])
        )
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up},
            [backend_config("a", "u", "/a", cache={"ttl": "30s"})],
            forward_headers=["Authorization"],
        )
        gw = await start_gateway(nursery, config)
        alice = [
            await gw.get("/api/1", headers={"authorization": "Bearer alice"}) for _ in range(2)
        ]
        assert [r.headers["x-gateway-backends"] for r in alice] == ["a=ok", "a=ok;cache=hit"]
        bob = await gw.get("/api/1", headers={"authorization": "Bearer bob"})
        assert bob.headers["x-gateway-backends"] == "a=ok"  # his own entry
        assert len(seen) == 2


def backend_cache_warnings(endpoint: dict[str, Any]) -> list[str]:
    config = {"version": 1, "upstreams": {"u": {"url": "http://127.0.0.1:9"}}}
    config["upstreams"]["u"].update(endpoint.pop("upstream", {}))
    plan = load_config("c.yaml", {}, text=json.dumps({**config, "endpoints": [endpoint]}))
    return [str(w) for w in plan.warnings if ".cache: " in str(w)]


AUTHORIZATION_WARNING = (
    "c.yaml: endpoints[0].backends[0].cache: warning: its calls carry the client's "
    "Authorization (forward_headers or a header template), so a reply is stored only when "
    "the upstream allows it with s-maxage, public or must-revalidate (RFC 9111 section "
    "3.5); X-Gateway-Backends says cache=not-stored-authorization when it does not"
)


@pytest.mark.parametrize(
    "endpoint",
    [
        {"forward_headers": ["Authorization"]},
        {"backend": {"headers": {"Authorization": "{header.Authorization}"}}},
        {"backend": {"headers": {"Authorization": "Bearer {header.X-Token}"}}},
    ],
)
def test_check_warns_about_a_backend_cache_behind_the_clients_authorization(
    endpoint: dict[str, Any],
) -> None:
    backend = backend_config("a", "u", "/a", cache={"ttl": "5s"}, **endpoint.pop("backend", {}))
    warnings = backend_cache_warnings({"path": "/a", "backends": [backend], **endpoint})
    assert warnings == [AUTHORIZATION_WARNING]


@pytest.mark.parametrize(
    "endpoint",
    [
        {},  # no Authorization at all
        {"upstream": {"headers": {"Authorization": "Bearer service-token"}}},
        {"backend": {"headers": {"Authorization": "Bearer service-token"}}},
        {"forward_headers": ["Authorization"], "backend": {"cache": None}},  # nothing cached
    ],
)
def test_no_warning_for_a_backend_cache_without_the_clients_authorization(
    endpoint: dict[str, Any],
) -> None:
    extra = endpoint.pop("backend", {})
    backend = backend_config("a", "u", "/a", **{"cache": {"ttl": "5s"}, **extra})
    if backend["cache"] is None:
        del backend["cache"]
    assert backend_cache_warnings({"path": "/a", "backends": [backend], **endpoint}) == []
