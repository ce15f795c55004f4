"""Parsing of the human units used in config files: durations and byte sizes."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration_s(text: str) -> float:
    """Parse ``250ms``, ``2s``, ``1.5s``, ``1m`` or ``1h`` into seconds.

    Raises:
        ValueError: the text has no unit, an unknown unit, or is not a positive number.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: write a number with a unit, like 250ms, 2s, 1.5s or 1m"
        )
    seconds = float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return seconds


def parse_size_bytes(text: str) -> int:
    """Parse ``512KiB``, ``16MiB``, ``1MB`` or a plain byte count like ``4096``.

    Raises:
        ValueError: the text is not a size or is zero.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid size {text!r}: write bytes or a unit, like 512KiB or 16MiB")
    size = int(float(match.group(1)) * _SIZE_FACTORS[match.group(2)])
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be greater than zero")
    return size


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration_s` for display: ``0.25`` -> ``250ms``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
