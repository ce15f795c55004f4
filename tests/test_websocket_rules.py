"""The WebSocket relay's pure rules (close codes, origins, subprotocols, handshake fields)
and its config problems, each at its place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import ConfigError, load_config
from gateway._rules.cors import CorsPolicy
from gateway._rules.websocket import (
    HANDSHAKE_FIELDS,
    INTERNAL_ERROR,
    code_for_client,
    code_for_upstream,
    invalid_subprotocol,
    is_token,
    offered_subprotocols,
    origin_allowed,
    without_handshake_fields,
)

# codes a close frame may carry (RFC 6455 section 7.4): the registered ones and 3000-4999
SENDABLE = st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013])
PRIVATE = st.integers(min_value=3000, max_value=4999)


@given(st.one_of(SENDABLE, PRIVATE))
def test_a_code_a_frame_may_carry_crosses_unchanged_both_ways(code: int) -> None:
    assert code_for_upstream(code) == code
    assert code_for_client(code) == code


def test_codes_no_frame_may_carry_become_what_the_other_side_can_be_sent() -> None:
    # 1005: a close frame without a code; passed on as one (the stream sends no code)
    assert code_for_upstream(1005) == 1005
    assert code_for_client(1005) == 1005
    # a drop: the upstream connection is dropped too; the client's cannot be, so 1011
    assert code_for_upstream(1006) is None
    assert code_for_upstream(1015) is None
    assert code_for_client(None) == INTERNAL_ERROR
    assert code_for_client(1006) == INTERNAL_ERROR


def test_origin_check() -> None:
    policy = CorsPolicy(origins=frozenset({"https://app.example"}))
    assert origin_allowed(None, [(b"origin", b"https://evil.example")])
    assert origin_allowed(policy, [])  # not a browser
    assert origin_allowed(policy, [(b"origin", b"https://app.example")])
    assert not origin_allowed(policy, [(b"origin", b"https://evil.example")])
    assert not origin_allowed(policy, [(b"origin", b"http://app.example")])
    both = [(b"origin", b"https://app.example"), (b"origin", b"https://evil.example")]
    assert not origin_allowed(policy, both)


@given(st.text(max_size=20))
def test_a_subprotocol_is_a_token(text: str) -> None:
    allowed = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert is_token(text) == (bool(text) and set(text) <= allowed)
    # an empty list element is no offer (RFC 9110 section 5.6.1.2): ignored, not refused
    assert invalid_subprotocol(["chat", text]) == (None if is_token(text) or not text else text)
    assert offered_subprotocols(["", "chat", text, "chat", ""]) == [
        name for name in dict.fromkeys(["chat", text]) if name
    ]


@given(
    st.lists(
        st.tuples(
            st.sampled_from([*sorted(HANDSHAKE_FIELDS), b"x-a", b"cookie"]), st.binary(max_size=5)
        )
    )
)
def test_handshake_fields_never_cross(headers: list[tuple[bytes, bytes]]) -> None:
    kept = without_handshake_fields(headers)
    assert all(name not in HANDSHAKE_FIELDS for name, _ in kept)
    assert kept == [(n, v) for n, v in headers if n in (b"x-a", b"cookie")]


def config(**endpoint: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "endpoints": [
            {"path": "/live", "backends": [{"name": "b", "upstream": "u", "path": "/"}], **endpoint}
        ],
    }


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("c.yaml", {}, text=json.dumps(doc))
    return [str(p) for p in info.value.problems]


def test_websocket_needs_a_passthrough_get_endpoint() -> None:
    found = problems(config(websocket=True, method="POST"))
    assert found == [
        "c.yaml: endpoints[0].websocket: WebSockets are relayed by passthrough endpoints: "
        "add passthrough: true",
        "c.yaml: endpoints[0].websocket: a WebSocket opening handshake is a GET request "
        "(RFC 6455 section 4.1): the endpoint's method is POST",
    ]


def test_websocket_settings_problems_are_reported_at_their_place() -> None:
    found = problems(
        config(
            passthrough=True,
            forward_headers=["Sec-WebSocket-Protocol", "X-Trace"],
            websocket={
                "max_message_size": "0",
                "idle_timeout": 5,
                "max_connections": 0,
                "allow_origins": ["https://app.example/", "null"],
                "ping": True,
            },
        )
    )
    text = "\n".join(found)
    assert "endpoints[0].websocket.max_message_size:" in text
    assert "endpoints[0].websocket.idle_timeout: a duration must be a string" in text
    assert "endpoints[0].websocket.max_connections:" in text
    assert "endpoints[0].websocket.ping: unknown key 'ping'" in text
    assert len(found) == 4  # the model's problems first; the rest once they are fixed
    found = problems(
        config(
            passthrough=True,
            forward_headers=["Sec-WebSocket-Protocol", "X-Trace"],
            websocket={"allow_origins": ["https://app.example/", "null", "regex:("]},
        )
    )
    assert found[0].startswith(
        "c.yaml: endpoints[0].forward_headers[0]: Sec-WebSocket-Protocol belongs to the "
        "WebSocket handshake"
    )
    assert [p.split(":")[1].strip() for p in found[1:]] == [
        "endpoints[0].websocket.allow_origins[0]",
        "endpoints[0].websocket.allow_origins[1]",
        "endpoints[0].websocket.allow_origins[2]",
    ]


def test_gateway_check_exits_2_naming_the_file_and_place(tmp_path: Path) -> None:
    file = tmp_path / "gw.yaml"
    file.write_text(json.dumps(config(websocket={"idle_timeout": "1m"})))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"{file}: endpoints[0].websocket: WebSockets are relayed by passthrough" in (
        result.stdout + result.stderr
    )


def test_a_valid_websocket_endpoint_compiles() -> None:
    plan = load_config(
        "c.yaml",
        {},
        text=json.dumps(
            config(
                passthrough=True,
                websocket={
                    "max_message_size": "256KiB",
                    "idle_timeout": "90s",
                    "max_connections": 50,
                    "allow_origins": ["https://App.Example:443"],
                },
            )
        ),
    )
    ws = plan.endpoints[0].websocket
    assert ws is not None
    assert (ws.max_message_bytes, ws.idle_timeout_s, ws.max_connections) == (262144, 90.0, 50)
    assert ws.origins is not None and ws.origins.allows("https://app.example")
    default = load_config("c.yaml", {}, text=json.dumps(config(passthrough=True, websocket=True)))
    ws = default.endpoints[0].websocket
    assert ws is not None
    assert (ws.max_message_bytes, ws.idle_timeout_s, ws.max_connections) == (1048576, 60.0, 1000)
    assert ws.origins is None
    plain = load_config("c.yaml", {}, text=json.dumps(config(passthrough=True)))
    assert plain.endpoints[0].websocket is None


def test_gateway_check_summary_shows_the_websocket_settings(tmp_path: Path) -> None:
    file = tmp_path / "gw.yaml"
    settings = {"max_connections": 50, "allow_origins": ["https://app.example"]}
    file.write_text(json.dumps(config(passthrough=True, websocket=settings)))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "websocket max_message_size 1048576 idle_timeout 60s max_connections 50 "
        "allow_origins https://app.example"
    ) in result.stdout
