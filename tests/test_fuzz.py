"""Replay the committed fuzz corpus, then mutate it (see tests/fuzz/targets.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

from targets import CORPUS, fuzz_config, fuzz_request

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
CONFIG_SEEDS = sorted((CORPUS / "config").iterdir())
REQUEST_SEEDS = sorted((CORPUS / "request").iterdir())


@pytest.mark.parametrize("seed", CONFIG_SEEDS, ids=lambda p: p.name)
def test_config_corpus_replays(seed: Path) -> None:
    fuzz_config(seed.read_bytes())


@pytest.mark.parametrize("seed", REQUEST_SEEDS, ids=lambda p: p.name)
def test_request_corpus_replays(seed: Path) -> None:
    fuzz_request(seed.read_bytes().strip())


def test_the_corpus_is_not_empty() -> None:
    assert len(CONFIG_SEEDS) >= 8 and len(REQUEST_SEEDS) >= 8


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Path]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(
            st.one_of(
                st.binary(min_size=1, max_size=8),
                st.sampled_from(
                    [
                        b"{",
                        b"}",
                        b"%2F",
                        b"%00",
                        b"..",
                        b"/",
                        b"?",
                        b"#",
                        b"\n",
                        b": ",
                        b"[*]",
                        b"${X}",
                    ]
                ),
            )
        )
        if kind == "insert":
            data[at:at] = chunk
        elif kind == "delete":
            del data[at : at + len(chunk)]
        else:
            data[at : at + len(chunk)] = chunk
    return bytes(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(CONFIG_SEEDS))
def test_mutated_configs_fail_only_with_config_errors(data: bytes) -> None:
    fuzz_config(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(REQUEST_SEEDS))
def test_mutated_requests_never_leave_their_upstream(data: bytes) -> None:
    fuzz_request(data.strip())
