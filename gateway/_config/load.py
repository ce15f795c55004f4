"""Reading a config file: YAML, then ``${VAR}`` interpolation, then validation.

Every problem becomes a :class:`ConfigProblem` naming the file, the path inside the
document and what is wrong; nothing here prints a traceback or echoes a value that may
be a secret.
"""

from __future__ import annotations

import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, JsonValue, ValidationError

from .._errors import ConfigError, ConfigProblem
from .._rules.jsonvalue import MAX_INT, MIN_INT
from .model import GatewayConfig
from .salvage import Salvage, salvage
from .types import yaml_kind

# pure-Python PyYAML rejects valid flow mappings containing "?" (pyyaml#128); libyaml's
# loader does not. The wheels ship libyaml; fall back only where it is missing.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_MERGE = "tag:yaml.org,2002:merge"


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Scalars resolved as the YAML 1.2 core schema says (section 10.3.2), for the whole
    config. Booleans: only true/false. YAML 1.1 (PyYAML's default) also reads yes/no/on/off
    as booleans, which would turn the `on:` key of `retries` into True. Numbers: YAML 1.1
    reads ``12:30`` as 750 and ``012`` as 10, and ``1e3`` as a string (see the resolvers
    below).

    YAML 1.2 (section 3.2.1.1) also requires the keys of a mapping to be unique; PyYAML
    keeps the last value silently. Every repeated key is recorded in ``duplicates`` as
    ``(key, first, repeated)`` (``(line, column)`` marks, from 1) and loading goes on, so all
    of them are reported at once. Only the constructor is ours: parsing stays in libyaml.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, tuple[int, int], tuple[int, int]]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_at: dict[Any, tuple[int, int]] = {}
        for key_node, _ in node.value:
            # keys brought in by a merge (<<) may be overridden: that is what merging is for
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node)
            mark = key_node.start_mark
            at = (mark.line + 1, mark.column + 1)
            if key in first_at:
                self.duplicates.append((str(key), first_at[key], at))
            else:
                first_at[key] = at
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NULL = "tag:yaml.org,2002:null"
# YAML 1.1 resolvers replaced by the YAML 1.2 core schema's (section 10.3.2), or dropped
# (`=`, YAML 1.1's "value" type, which the safe constructor cannot even build)
_REPLACED = frozenset({_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:value"})
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in _Base.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.1 also reads 12:30 as 750 (base 60), 012 as 10 (octal), 1_000 as 1000 and 0b11
# as 3, and 1e3 (no dot) as a string; YAML 1.2 reads 12:30, 1_000 and 0b11 as strings,
# 012 as 12 and 1e3 as 1000.0.
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_NON_FINITE = re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _int_value(text: str) -> int:
    """A YAML 1.2 integer: decimal (leading zeros allowed), ``0o`` octal, ``0x`` hex.

    Raises:
        ValueError: not one (an explicit ``!!int`` on something else).
    """
    if text[:2] in ("0o", "0x"):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    try:
        return _int_value(text)
    except ValueError:  # an explicit !!int on something else
        raise yaml.constructor.ConstructorError(
            None, None, "not an integer", node.start_mark
        ) from None


_Loader.add_constructor(_INT, _construct_int)


def _yaml_gotchas(node: yaml.Node | None, file: str) -> list[ConfigProblem]:
    """What YAML reads differently from what was surely meant, at its path in the document:

    - ``{body.x}`` unquoted, a flow mapping whose entry has no ``:`` (YAML 1.2 section
      7.4.3: its value is null): a template reference, or a mapping, was meant;
    - ``.inf`` and ``.nan``: numbers JSON has not (RFC 8259 section 6), which no value of
      the config (a template, a static value, a default, a schema) can send or use; a
      float beyond a double's range (``1e400``) reads as infinity;
    - an integer beyond 64 bits, which JSON parsers read inexactly (RFC 7493 section 2.2)
      and a client's body may not hold either (:mod:`gateway._rules.jsonvalue`).
    """
    problems: list[ConfigProblem] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[int | str, ...]]] = [] if node is None else [(node, ())]
    while stack:
        node, at = stack.pop()
        if id(node) in seen:  # an alias: reported where its anchor is
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children: list[tuple[yaml.Node, tuple[int | str, ...]]] = []
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                if (
                    node.flow_style
                    and isinstance(value, yaml.ScalarNode)
                    and value.tag == _NULL
                    and value.start_mark.index == key.end_mark.index
                ):
                    problems.append(
                        ConfigProblem(
                            file,
                            format_path(at),
                            f"{{{name}}} without quotes is a YAML mapping ({name}: null): "
                            f'write "{{{name}}}" for a reference, or {name}: null',
                        )
                    )
                children.append((value, at if key.tag == _MERGE else (*at, name)))
            stack.extend(reversed(children))  # in document order
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*at, i)) for i, item in reversed(list(enumerate(node.value))))
        elif node.tag == _FLOAT and (
            _NON_FINITE.match(node.value) or not math.isfinite(float(node.value))
        ):
            problems.append(
                ConfigProblem(
                    file,
                    format_path(at),
                    f"{node.value} is not a JSON number: JSON has no infinity or NaN"
                    + (
                        ""
                        if _NON_FINITE.match(node.value)
                        else " (and this one is beyond a double's range)"
                    ),
                )
            )
        elif node.tag == _INT and not MIN_INT <= _int_or_zero(node.value) <= MAX_INT:
            problems.append(
                ConfigProblem(
                    file,
                    format_path(at),
                    f"{node.value} is an integer beyond 64 bits, which JSON parsers read "
                    "inexactly (RFC 7493 section 2.2): quote it to send a string",
                )
            )
    return problems


def _int_or_zero(text: str) -> int:
    """:func:`_int_value`, or 0 for what is no integer (the constructor reports it)."""
    try:
        return _int_value(text)
    except ValueError:
        return 0


_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


def format_path(loc: tuple[int | str, ...]) -> str:
    """``("endpoints", 0, "backends", 1, "upstream")`` -> ``endpoints[0].backends[1].upstream``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def interpolate(
    value: Any, env: Mapping[str, str], file: str, loc: tuple[int | str, ...] = ()
) -> tuple[Any, list[ConfigProblem]]:
    """Replace ``${VAR}`` (and ``${VAR:-default}``) in every string value; ``$$`` is ``$``.

    ``${VAR:-default}`` takes the default when VAR is unset or empty, as the shell does.

    Interpolation runs on parsed values, never on the YAML text, so a variable's content
    cannot change the document's structure. Keys are not interpolated. An unset variable
    becomes the empty string, and a problem.
    """
    data, problems, _ = _interpolate(value, env, file, loc)
    return data, problems


def _interpolate(
    value: Any, env: Mapping[str, str], file: str, loc: tuple[int | str, ...] = ()
) -> tuple[Any, list[ConfigProblem], list[tuple[int | str, ...]]]:
    """:func:`interpolate`, also giving the location of each value with an unset variable."""
    problems: list[ConfigProblem] = []
    unset: list[tuple[int | str, ...]] = []

    def walk(node: Any, where: tuple[int | str, ...]) -> Any:
        if isinstance(node, str):
            return substitute(node, where)
        if isinstance(node, list):
            return [walk(item, (*where, i)) for i, item in enumerate(node)]
        if isinstance(node, dict):
            return {k: walk(v, (*where, str(k))) for k, v in node.items()}
        return node

    def substitute(text: str, where: tuple[int | str, ...]) -> str:
        if "$" not in text:
            return text

        def one(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            name, fallback = match.group(2), match.group(3)
            value = env.get(name)
            if fallback is not None and not value:
                return fallback  # as in the shell: unset or empty takes the default
            if value is not None:
                return value
            problems.append(
                ConfigProblem(file, format_path(where), f"environment variable {name} is not set")
            )
            unset.append(where)
            return ""

        return _VAR.sub(one, text)

    return walk(value, loc), problems, unset


def parse_yaml(text: str, file: str) -> Any:
    """Parse YAML text; a syntax error names the line and column where the problem is.

    Raises:
        ConfigError: a syntax error, or every key repeated within one mapping (naming the
            lines of both), an unquoted ``{reference}`` or a ``.inf`` or ``.nan``.
    """
    data, duplicates = parse_yaml_collecting(text, file)
    if duplicates:
        raise ConfigError(duplicates)
    return data


def parse_yaml_collecting(text: str, file: str) -> tuple[Any, list[ConfigProblem]]:
    """:func:`parse_yaml`, giving every repeated key as a problem next to the data read
    with the last value of each (as YAML 1.1 loaders read it), so that the rest of the
    document can still be checked in the same run; and every unquoted ``{reference}``,
    ``.inf`` and ``.nan`` as a problem at its path (:func:`_yaml_gotchas`).

    Raises:
        ConfigError: a syntax error.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        gotchas = _yaml_gotchas(node, file)
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([ConfigProblem(file, "", _syntax_message(exc))]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(file, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    duplicates = [
        ConfigProblem(
            file,
            "",
            f"duplicate key {key!r} at {_where(at, first)} (first at "
            f"{_where(first, at)}): keys of a mapping must be unique",
        )
        for key, first, at in loader.duplicates
    ]
    return data, duplicates + gotchas


def _where(at: tuple[int, int], other: tuple[int, int]) -> str:
    """``line N``, with the column when ``other`` is on the same line (a flow mapping)."""
    return f"line {at[0]}" + (f", column {at[1]}" if at[0] == other[0] else "")


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    """Where the syntax error is, and what it is.

    The scanner notices a missing ``:`` only on the next line (its problem mark); the line
    at fault is where the key started (the context mark). Otherwise the problem mark is
    where the error is, and a context on another line (an unclosed ``[``) is named too.
    """

    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem = exc.problem or "syntax error"
    if exc.context == "while scanning a simple key" and exc.context_mark is not None:
        return f"invalid YAML at {at(exc.context_mark)}: {problem} after this key"
    mark = exc.problem_mark or exc.context_mark
    where = f" at {at(mark)}" if mark is not None else ""
    context = exc.context or ""
    if context and exc.context_mark is not None and at(exc.context_mark) != at(mark):
        context += f" started at {at(exc.context_mark)}"
    return f"invalid YAML{where}: {problem}" + (f" ({context})" if context else "")


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that the location's last key belongs to, for 'unknown key' hints."""
    model: type[BaseModel] = GatewayConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            # a dict key (an upstream's name): the model is the dict's value type
            continue
        found = _find_model(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


# YAML 1.1 booleans (PyYAML's default), strings in YAML 1.2: never a secret, so echoed
_YAML11_BOOLS = frozenset({"y", "n", "yes", "no", "on", "off"})


def _bool_message(value: object) -> str:
    """What to write instead of a value that is not a boolean. The value is named only
    when it is a YAML 1.1 boolean word (any other value may be an interpolated secret)."""
    what = f"{value!r} is not a boolean" if _is_yaml11_bool(value) else "not a boolean"
    return f"{what}: YAML 1.2 booleans are true and false"


def _is_yaml11_bool(value: object) -> bool:
    return isinstance(value, str) and value.lower() in _YAML11_BOOLS


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """pydantic appends "[function-before]" style tags to locs of validators: drop them."""
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _union_tags(loc: tuple[int | str, ...]) -> list[int]:
    """The positions in ``loc`` of pydantic's union member tags (``CorsConfig``,
    ``list[RateLimitConfig]``, ``literal[False]``, and in a JSON value ``dict`` and
    ``list``), found by walking the models."""
    tags: list[int] = []
    annotation: Any = GatewayConfig
    for i, part in enumerate(loc):
        while typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        if annotation is JsonValue:  # each level of a JSON value is tagged dict or list
            tags.extend(j for j in range(i, len(loc), 2) if loc[j] in ("dict", "list"))
            break
        members = [a for a in _union_members(annotation) if a is not type(None)]
        if len(members) > 1:
            tags.append(i)
            annotation = next((m for m in members if _member_tag(m) == part), None)
            continue
        if len(members) == 1:
            annotation = members[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {f.alias or name: f for name, f in annotation.model_fields.items()}
            field = fields.get(part) if isinstance(part, str) else None
            annotation = field.annotation if field is not None else None
        elif typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            break
    return tags


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _member_tag(member: Any) -> str:
    """pydantic's tag of a model or list member (others are not walked into)."""
    if isinstance(member, type):
        return member.__name__
    if typing.get_origin(member) is list:
        return f"list[{_member_tag(typing.get_args(member)[0])}]"
    return ""


def _one_union_member(errors: list[Any]) -> list[Any]:
    """A value that fits no member of a union (``X | list[X]``, ``X | false``) is reported
    by pydantic once per member, each under a tag naming it. Keep the member the value
    has the shape of (its errors lie deeper than the tag), else one problem saying what
    each member wants; and drop the tags from the paths."""
    groups: dict[tuple[int | str, ...], list[Any]] = {}
    order: list[Any] = []  # an error, or the key of a union's group where it first appears
    for error in errors:
        loc = tuple(error["loc"])
        tags = _union_tags(loc)
        if not tags:
            order.append(error)
            continue
        at = tags[0]
        if loc[:at] not in groups:
            order.append(loc[:at])
        kept = tuple(p for i, p in enumerate(loc) if i not in tags)
        groups.setdefault(loc[:at], []).append({**error, "loc": kept, "deep": len(loc) > at + 1})
    out: list[Any] = []
    for item in order:
        if isinstance(item, dict):
            out.append(item)
            continue
        group = groups[item]
        deep = [e for e in group if e["deep"]]
        if deep:
            out += deep
        else:
            wants = dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in group)
            out.append({**group[0], "msg": "Input should be " + " or ".join(wants)})
    return out


_CORS_SHAPE = {
    False: "cors takes settings, like {allow_origins: [https://app.example]}, or false"
    " (no CORS on this endpoint)",
    True: "cors takes settings, like {allow_origins: [https://app.example]}",
}


def _problems_from_validation(exc: ValidationError, file: str) -> list[ConfigProblem]:
    problems = []
    for error in _one_union_member(exc.errors(include_url=False)):
        loc = tuple(error["loc"])
        kind = error["type"]
        message = error["msg"]
        if kind in ("bool_type", "bool_parsing"):
            message = _bool_message(error.get("input"))
        elif kind == "extra_forbidden":
            model = _model_at(loc)
            known = ", ".join(model.model_fields) if model else ""
            message = f"unknown key {loc[-1]!r}" + (f" (allowed: {known})" if known else "")
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = message.removeprefix("Value error, ")
        elif kind == "invalid-json-value":
            message = f"{yaml_kind(error.get('input'))} is not a JSON value (quote it)"
        elif loc and loc[-1] == "[key]":  # a key of a JSON object (a YAML 1: or true:)
            loc, message = loc[:-1], "a key of a JSON object is a string (quote it)"
        elif kind == "literal_error" and loc == ("version",):
            message = "unsupported config version (this gateway reads version: 1)"
        loc = _clean_loc(loc)
        if loc[-1:] == ("cors",) and message.startswith("Input should be"):
            # a value of the wrong shape (cors: true, say), not pydantic's type names
            message = _CORS_SHAPE[loc[0] == "defaults"]
        problems.append(ConfigProblem(file, format_path(loc), message))
    return problems


def load_config_text(
    text: str, file: str = "<config>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Parse, interpolate and validate a config document (cross-references are checked
    by :func:`gateway.compile_config`).

    Raises:
        ConfigError: with every problem found.
    """
    document = load_document(text, file, env)
    if document.config is None:
        raise ConfigError(list(document.problems))
    return document.config


@dataclass(frozen=True)
class Document:
    """A parsed and validated config document.

    Attributes:
        config: the document, when it is valid; else None.
        problems: what is wrong with it (unset variables, validation), in that order.
        pruned: when it is not valid, what of it can still be compiled (to report the
            cross-reference problems of its valid parts in the same run); None when
            nothing can.
        salvage: how ``pruned`` was made from the document (see :mod:`.salvage`).
    """

    config: GatewayConfig | None
    problems: tuple[ConfigProblem, ...] = ()
    pruned: GatewayConfig | None = None
    salvage: Salvage | None = None


def load_document(text: str, file: str, env: Mapping[str, str] | None = None) -> Document:
    """Parse, interpolate and validate a config document, collecting every problem.

    A repeated key is a problem, and the rest of the document is checked with its last
    value.

    Raises:
        ConfigError: the YAML cannot be read (syntax) or is not a mapping.
    """
    raw, duplicates = parse_yaml_collecting(text, file)
    if raw is None:
        raise ConfigError([*duplicates, ConfigProblem(file, "", "the file is empty")])
    if not isinstance(raw, dict):
        raise ConfigError([*duplicates, ConfigProblem(file, "", "the top level must be a mapping")])
    data, problems, unset = _interpolate(raw, os.environ if env is None else env, file)
    error_locs: list[tuple[int | str, ...]] = list(unset)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        config = None
        # a value with an unset variable is reported as such, not as what "" fails
        reported = {p.path for p in problems}
        problems += [p for p in _problems_from_validation(exc, file) if p.path not in reported]
        error_locs += [_clean_loc(tuple(error["loc"])) for error in exc.errors()]
    problems = duplicates + problems
    if not problems:
        return Document(config)
    pruned = salvage(data, error_locs)
    if pruned is None:
        return Document(None, tuple(problems))
    try:
        return Document(None, tuple(problems), GatewayConfig.model_validate(pruned.data), pruned)
    except ValidationError:
        return Document(None, tuple(problems))  # nothing left that validates alone


def read_config_file(path: str) -> str:
    """Read a config file's text.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, "", f"cannot read file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(path, "", "the file is not UTF-8 text")]) from None
