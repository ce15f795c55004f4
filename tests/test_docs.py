"""The docs cannot drift: the config reference is generated, and the docs name the same
metrics, error codes, outcomes and config keys as the code (the README's commands are
checked in tests/test_readme.py)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from gateway._config.docs import config_reference_markdown

ROOT = Path(__file__).parent.parent


def test_config_reference_is_current() -> None:
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_reference_markdown(), (
        "docs/config.md is stale: run `gateway schema --markdown > docs/config.md`"
    )


def test_every_config_field_is_documented() -> None:
    reference = config_reference_markdown()
    for row in reference.splitlines():
        if row.startswith("| `"):
            assert not row.endswith("|  |"), f"undocumented field: {row}"


# --- The docs and the code name the same things, in both directions ---------------------
#
# Each list has one home in the docs, and the code side is read from the code itself, so a
# metric, error code, outcome or config key added later fails here until it is documented:
#
#   metrics      docs/operations.md, "Metrics" table   the collectors in _observability/metrics.py
#   error codes  docs/security.md, "Errors" list       every RequestError subclass's code, and
#                                                      every literal code of an error body
#   outcomes     README.md, "Outcomes" table           gateway._rules.aggregate.Outcome
#   config keys  docs/config.md (generated)            the models under GatewayConfig
#
# Elsewhere in the docs, every name of these kinds that is written as one must exist.

DOCS = ("README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))))


def _read(name: str) -> str:
    return (ROOT / name).read_text()


def _section(name: str, heading: str) -> str:
    """The text under ``heading`` (a line starting with it) up to the next heading."""
    text = _read(name)
    start = text.index("\n" + heading) + 1
    end = text.find("\n#", start + len(heading))
    return text[start : end if end >= 0 else None]


def _mismatch(kind: str, home: str, documented: set[str], defined: set[str], source: str) -> str:
    lines = []
    if defined - documented:
        lines.append(f"{kind} defined in {source} but not documented in {home}:")
        lines += [f"  {name}" for name in sorted(defined - documented)]
    if documented - defined:
        lines.append(f"{kind} documented in {home} but not defined in {source}:")
        lines += [f"  {name}" for name in sorted(documented - defined)]
    return "\n".join(lines)


def code_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every collector of the metrics module: exposed name -> (type, label names)."""
    from prometheus_client.metrics import MetricWrapperBase

    from gateway._observability import metrics

    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            # prometheus-client exposes a counter's samples as NAME_total
            suffix = "_total" if value._type == "counter" else ""
            found[value._name + suffix] = (value._type, tuple(value._labelnames))
    return found


def doc_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The rows of docs/operations.md's metrics table: name -> (type, label names)."""
    found = {}
    for row in _section("docs/operations.md", "## Metrics").splitlines():
        match = re.match(r"\| `(gateway_\w+)` \| (\w+) \|([^|]*)\|", row)
        if match:
            labels = re.sub(r"\([^)]*\)", "", match.group(3))
            names = tuple(label.strip() for label in labels.split(",") if label.strip())
            found[match.group(1)] = (match.group(2), names)
    return found


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    defined, documented = code_metrics(), doc_metrics()
    assert len(defined) >= 9
    assert set(documented) == set(defined), _mismatch(
        "metrics",
        "docs/operations.md (## Metrics)",
        set(documented),
        set(defined),
        "gateway/_observability/metrics.py",
    )
    for name, (kind, labels) in defined.items():
        assert documented[name] == (kind, labels), (
            f"docs/operations.md: {name} is a {kind} with labels {labels}, "
            f"the table says {documented[name]}"
        )


def test_metric_names_anywhere_in_the_docs_exist() -> None:
    defined = code_metrics()
    for doc in DOCS:
        for name in re.findall(r"`(gateway_\w+)", _read(doc)):
            assert name in defined, f"{doc} names metric {name}, which the code does not define"


def _gateway_sources() -> list[Path]:
    return sorted((ROOT / "gateway").rglob("*.py"))


def code_error_codes() -> dict[str, int | None]:
    """code -> status: every RequestError subclass (the error tree), and every code written
    as a literal into an error body (``error_body("...", ...)``, ``{"code": "..."}``),
    whose status the call site decides (None)."""
    import ast
    import importlib
    import pkgutil

    import gateway
    from gateway._errors import RequestError

    # subclasses defined anywhere in the package count: import all of it (but the module
    # that loads a config at import time, and the entry point)
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if module.name not in ("gateway.asgi", "gateway.__main__"):
            importlib.import_module(module.name)
    codes: dict[str, int | None] = {}
    todo = list(RequestError.__subclasses__())
    while todo:
        cls = todo.pop()
        codes[cls.code] = cls.status
        todo += cls.__subclasses__()
    for path in _gateway_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            literal: ast.expr | None = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name == "error_body":
                    literal = node.args[0]
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code":
                        literal = value
            if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
                codes.setdefault(literal.value, None)
    return codes


def doc_error_codes() -> dict[str, str]:
    """docs/security.md's list of codes: code -> the status text in parentheses."""
    section = _section("docs/security.md", "## Errors")
    return dict(re.findall(r"^- `([a-z_]+)` \(([^)]*)\)", section, re.M))


def test_every_error_code_is_documented_and_every_documented_code_exists() -> None:
    defined, documented = code_error_codes(), doc_error_codes()
    assert {"not_found", "rate_limited", "required_backend_failed"} <= set(defined)
    assert set(documented) == set(defined), _mismatch(
        "error codes",
        "docs/security.md (## Errors)",
        set(documented),
        set(defined),
        "gateway/_errors.py and the error bodies in gateway/",
    )
    for code, status in defined.items():
        if status is not None:
            assert str(status) in documented[code], (
                f"docs/security.md: {code} is answered with {status}, "
                f"the list says ({documented[code]})"
            )


def test_error_codes_anywhere_in_the_docs_exist() -> None:
    defined = code_error_codes()
    for doc in DOCS:
        text = _read(doc)
        named = re.findall(r'"code": "([a-z_]+)"', text)
        named += re.findall(r"\bcode `([a-z_]+)`", text)
        named += re.findall(r"\b[45]\d\d `([a-z_]+)`", text)
        for code in named:
            assert code in defined, f"{doc} names error code {code}, which the code never sends"


HTTP_OUTCOME = re.compile(r"http_(\d\d\d|\dxx|5xx|<status>)$")


def code_outcomes() -> set[str]:
    from gateway._rules.aggregate import Outcome, http_outcome

    assert HTTP_OUTCOME.match(http_outcome(503))
    return {v for k, v in vars(Outcome).items() if k.isupper() and isinstance(v, str)} | {
        "http_<status>"
    }


def doc_outcomes() -> set[str]:
    """The first column of the README's outcomes table."""
    readme = _read("README.md")
    table = readme.split("**Outcomes.**", 1)[1].split("\n- ", 1)[0]
    return set(re.findall(r"^ *\| `([^`]+)` \|", table, re.M))


def test_every_outcome_is_documented_and_every_documented_outcome_exists() -> None:
    defined, documented = code_outcomes(), doc_outcomes()
    assert documented == defined, _mismatch(
        "outcomes",
        "README.md (Outcomes)",
        documented,
        defined,
        "gateway/_rules/aggregate.py (Outcome)",
    )


def test_outcomes_anywhere_in_the_docs_exist() -> None:
    defined = code_outcomes()
    for doc in DOCS:
        for outcome in re.findall(r"\boutcomes? `([^`]+)`", _read(doc)):
            assert outcome in defined or HTTP_OUTCOME.match(outcome), (
                f"{doc} names outcome {outcome}, which the code does not define"
            )


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The config models an annotation holds (``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _keys(model: type[BaseModel]) -> dict[str, object]:
    """A model's keys as written in YAML (``in``, not ``in_``) -> annotation."""
    return {f.alias or name: f.annotation for name, f in model.model_fields.items()}


def code_config_models() -> set[type[BaseModel]]:
    """Every model reachable from the top-level config."""
    from gateway._config.model import GatewayConfig

    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [GatewayConfig]
    while todo:
        model = todo.pop()
        if model not in seen:
            seen.add(model)
            todo += [m for ann in _keys(model).values() for m in _models_in(ann)]
    return seen


def resolve_config_path(path: str) -> type[BaseModel] | None:
    """The model a dotted path such as ``upstreams.NAME.retries`` leads to, or None when
    it ends at a plain value (``server.bind``). A segment after a mapping of names
    (``upstreams``, ``headers``) may be any name; ``[]`` and ``*`` stand for any element.
    Raises KeyError naming the first unknown segment."""
    from gateway._config.model import GatewayConfig

    model: type[BaseModel] | None = GatewayConfig
    segments = [s for s in re.split(r"\.|\[\]", path) if s]
    names_next = False
    for i, segment in enumerate(segments):
        if names_next:
            names_next = False
            continue
        keys = _keys(model) if model is not None else {}
        if segment not in keys:
            where = model.__name__ if model is not None else "a plain value"
            raise KeyError(f"{path}: no key {segment!r} in {where}")
        annotation = keys[segment]
        names_next = any(
            typing.get_origin(a) is dict for a in (annotation, *typing.get_args(annotation))
        )
        models = _models_in(annotation)
        # `X | list[X]` holds one model; where several could follow, the next key decides
        later = segments[i + 2 if names_next else i + 1 :]
        model = next((m for m in models if later and later[0] in _keys(m)), None) or (
            models[0] if models else None
        )
    return model


def doc_config_sections() -> dict[str, set[str]]:
    """docs/config.md: section path ("" for the top level) -> the keys of its table."""
    sections: dict[str, set[str]] = {}
    current: str | None = None
    for line in _read("docs/config.md").splitlines():
        heading = re.match(r"## (?:`([^`]+)`|Top level)$", line)
        if heading:
            current = heading.group(1) or ""
            sections[current] = set()
        elif current is not None and (row := re.match(r"\| `([^`]+)` \|", line)):
            sections[current].add(row.group(1))
    return sections


def test_every_config_key_is_documented_and_every_documented_key_exists() -> None:
    from gateway._config.model import GatewayConfig

    problems = []
    documented: dict[type[BaseModel], set[str]] = {}
    for section, keys in doc_config_sections().items():
        try:
            model = resolve_config_path(section) if section else GatewayConfig
        except KeyError as exc:
            problems.append(f"docs/config.md section {section!r}: {exc.args[0]}")
            continue
        if model is None:
            problems.append(f"docs/config.md section {section!r} is not a mapping")
            continue
        for key in sorted(keys - set(_keys(model))):
            problems.append(f"docs/config.md names {section or 'top level'}.{key}: no such key")
        documented.setdefault(model, set()).update(keys)
    for model in sorted(code_config_models(), key=lambda m: m.__name__):
        if model not in documented:
            problems.append(f"{model.__name__} has no section in docs/config.md")
            continue
        for key in sorted(set(_keys(model)) - documented[model]):
            problems.append(f"{model.__name__}.{key} is not documented in docs/config.md")
    assert not problems, "\n".join(problems)


CONFIG_PATH = re.compile(
    r"`((?:server|defaults|upstreams|endpoints|state|tracing)(?:\.[A-Za-z_*]+|\[\]|\[\d+\])+)"
)


def test_config_keys_anywhere_in_the_docs_exist() -> None:
    problems = []
    for doc in DOCS:
        for path in CONFIG_PATH.findall(_read(doc)):
            try:
                resolve_config_path(re.sub(r"\[\d+\]", "[]", path))
            except KeyError as exc:
                problems.append(f"{doc}: {exc.args[0]}")
    assert not problems, "\n".join(problems)


def test_the_debug_block_is_documented_with_every_field() -> None:
    """The `debug` key's reference names every field ``debug_block`` can write."""
    import ast

    source = (ROOT / "gateway" / "_fanout.py").read_text()
    function = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == "debug_block"
    )
    fields = {
        key.value
        for node in ast.walk(function)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    } - {"backends"}
    row = next(ln for ln in _read("docs/config.md").splitlines() if ln.startswith("| `debug` |"))
    missing = sorted(f for f in fields if f"`{f}`" not in row and not re.search(rf"\b{f}\b", row))
    assert not missing, f"docs/config.md's `debug` row leaves out {missing}"
