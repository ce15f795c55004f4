"""The docs cannot drift: the config reference is generated, the README's commands are real."""

from __future__ import annotations

import re
from pathlib import Path

from gateway._config.docs import config_reference_markdown

ROOT = Path(__file__).parent.parent


def test_config_reference_is_current() -> None:
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_reference_markdown(), (
        "docs/config.md is stale: run `gateway schema --markdown > docs/config.md`"
    )


def test_readme_quick_start_has_the_demo_and_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick, re.S)
    assert len(commands) == 2
    assert "gateway demo" in commands[0]
    assert commands[1] == "./scripts/test"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n./scripts/test\n" in ci
    assert "mypy --strict gateway" in ci
    assert "ruff check" in ci


def test_every_config_field_is_documented() -> None:
    reference = config_reference_markdown()
    for row in reference.splitlines():
        if row.startswith("| `"):
            assert not row.endswith("|  |"), f"undocumented field: {row}"


def _yaml_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", readme, re.S)


def test_readme_config_examples_are_valid() -> None:
    from gateway import load_config

    blocks = _yaml_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        if block.startswith("upstreams:"):
            block = "version: 1\n" + block  # a fragment that defines its upstreams
        elif not block.startswith("version: 1"):
            # a fragment: give it the upstreams it names (keys are unique in YAML 1.2)
            upstreams = sorted(set(re.findall(r"upstream: (\w+)", block)))
            block = (
                "version: 1\nupstreams:\n"
                + "".join(f"  {u}: {{url: 'http://127.0.0.1:9'}}\n" for u in upstreams)
                + block
            )
        load_config("README.md", {"USERS_TOKEN": "t"}, text=block)
