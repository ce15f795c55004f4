"""The README's commands are the ones that run: its quick start, its test command (which
`.ci/run` runs, then the linters), and its config examples."""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", quick, re.S)


def test_readme_quick_start_has_the_demo_and_the_test_command() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert "gateway demo" in commands[0]
    assert commands[1] == "./scripts/test"


def test_the_quick_starts_demo_command_is_installed_by_the_package() -> None:
    """`.venv/bin/gateway` exists after `pip install -e .` because the package declares it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, function = project["project"]["scripts"]["gateway"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    demo = _quick_start_commands()[0]
    assert "pip install -e ." in demo
    assert demo.endswith(".venv/bin/gateway demo")


def test_ci_runs_the_readme_test_command_then_the_linters() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [line for line in ci.splitlines() if line and not line.startswith(("#", "echo"))]
    test_command = _quick_start_commands()[1]
    assert test_command in lines, f".ci/run does not run the README's {test_command}"
    after = "\n".join(lines[lines.index(test_command) + 1 :])
    # the README says: "CI runs exactly this, then `ruff` and `mypy --strict gateway`"
    readme = (ROOT / "README.md").read_text()
    assert "CI runs exactly this, then `ruff` and\n`mypy --strict gateway`" in readme
    assert ".venv/bin/ruff check gateway tests bench" in after
    assert ".venv/bin/ruff format --check gateway tests bench" in after
    assert ".venv/bin/mypy --strict gateway" in after


def test_scripts_test_does_what_the_readme_says() -> None:
    """It creates .venv if needed, installs `.[dev]` into it, and runs pytest with the
    arguments it was given."""
    script = ROOT / "scripts" / "test"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert '[ -x .venv/bin/python ] || "$PY" -m venv .venv' in text
    assert "pip install --quiet --disable-pip-version-check -e '.[dev]'" in text
    assert text.rstrip().endswith('exec .venv/bin/python -m pytest "$@"')
    for package in ("redis-server", "nginx-light"):
        assert package in text


def test_ci_and_scripts_name_only_test_files_that_exist() -> None:
    for name in (".ci/run", "scripts/test"):
        for path in re.findall(r"\btests/[\w/]+\.py\b", (ROOT / name).read_text()):
            assert (ROOT / path).is_file(), f"{name} names {path}, which does not exist"


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
