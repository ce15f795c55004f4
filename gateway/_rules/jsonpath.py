"""JSONPath (RFC 9535) of a value inside a JSON document (pure): how a refusal names the
value at fault in the client's body (``"path": "$.items[0].qty"``), for schema failures and
body template references alike, so a client reads one form."""

from __future__ import annotations

import re
from collections.abc import Sequence

PathSegment = str | int
"""A member name or an array index."""

_SHORTHAND = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_TO_ESCAPE = re.compile(r"[\\'\x00-\x1f]")


def json_path(segments: Sequence[PathSegment]) -> str:
    """A JSONPath (RFC 9535) selecting exactly the value at ``segments``: ``$`` for the
    root, ``.name`` for a member name of ASCII letters, digits and ``_`` not starting with
    a digit (section 2.5.1.1), ``['name']`` for any other (escaped as in a normalized path,
    section 2.7), and ``[N]`` for an array index: ``$.items[0].qty``, ``$['a b']``."""
    parts = ["$"]
    for segment in segments:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _SHORTHAND.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            escaped = _TO_ESCAPE.sub(
                lambda m: _ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), segment
            )
            parts.append(f"['{escaped}']")
    return "".join(parts)
