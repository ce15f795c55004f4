"""Value types shared by the config schema's modules: durations, sizes, methods, names,
and the strict frozen base model (pure)."""

from __future__ import annotations

import datetime
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from .._rules.jsonvalue import json_kind
from .units import parse_duration_s, parse_size_bytes

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def yaml_kind(value: object) -> str:
    """What a YAML value that JSON has not is (a timestamp, binary data, a set), in
    YAML's words."""
    if isinstance(value, datetime.datetime):
        return "a timestamp"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return "a set" if isinstance(value, set | frozenset) else json_kind(value)


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"a duration must be a string with a unit, like 250ms or 2s (got {json_kind(value)})"
        )
    return parse_duration_s(value)


def _size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a size must be a byte count or a string like 16MiB")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be greater than zero")
        return value
    if isinstance(value, str):
        return parse_size_bytes(value)
    raise ValueError("a size must be a byte count or a string like 16MiB")


def _size_or_zero(value: object) -> int:
    """A size where 0 means "none at all" (``0``, ``"0"``, ``"0KiB"``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    if isinstance(value, str):
        try:
            return _size(value)
        except ValueError:
            if _ZERO.fullmatch(value):
                return 0
            raise
    return _size(value)


_ZERO = re.compile(r"\s*0+(\.0*)?\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*")


def _method(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    return value.upper()


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)$"}),
]
Size = Annotated[
    int,
    BeforeValidator(_size),
    WithJsonSchema(
        {"type": ["integer", "string"], "pattern": r"^\d+(\.\d+)?(B|KB|KiB|MB|MiB|GB|GiB)?$"}
    ),
]
SizeOrZero = Annotated[
    int,
    BeforeValidator(_size_or_zero),
    WithJsonSchema(
        {"type": ["integer", "string"], "pattern": r"^\d+(\.\d+)?(B|KB|KiB|MB|MiB|GB|GiB)?$"}
    ),
]
Method = Annotated[str, BeforeValidator(_method), WithJsonSchema({"enum": list(METHODS)})]
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )
