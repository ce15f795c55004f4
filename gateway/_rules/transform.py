"""Shaping a JSON value: select, then allow or deny, then rename (pure).

Used for one backend's result and for an endpoint's merged body (``shape``), with one path
syntax: dot paths (``data.items``) whose segments may end in ``[N]`` (an array index) or
``[*]`` (every element), the way references in templates read (``orders[*].id``). On
``select`` a segment of digits indexes an array too (``items.0`` is ``items[0]``), and
``[*]`` projects: ``orders[*].id`` is the list of the elements' ``id``, leaving out the
elements without one (as a JSONPath query does, RFC 9535 section 2.3.3). ``allow``,
``deny`` and ``rename`` apply to each element whenever they meet an array, so ``[*]`` is
allowed there to say so (``orders[*].id`` and ``orders.id`` are one path) and ``[N]`` is
not. No function here mutates its input or raises on arbitrary JSON, except the select
functions, which raise :class:`SelectMissing` when the path is absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

JSON: TypeAlias = Any
"""A value as parsed by orjson: dict, list, str, int, float, bool or None."""

# A path tree: key -> subtree, or None where the whole value under the key is meant.
PathTree: TypeAlias = Mapping[str, "PathTree | None"]


class SelectMissing(LookupError):
    """The ``select`` path is not in the response body."""


WILDCARD: Final = "[*]"
"""A ``[*]`` segment of a parsed path (no parsed key can contain a bracket)."""

# a key (anything but dots and brackets), then any number of [N] or [*]; or only brackets
_PATH_SEGMENT = re.compile(r"([^.\[\]]*)((?:\[(?:[0-9]{1,9}|\*)\])*)")
_BRACKET = re.compile(r"\[([0-9]{1,9}|\*)\]")


def _segments(path: str) -> list[tuple[str, bool]]:
    """``(part, bracketed)`` pairs: keys (False), then ``[N]`` digits or :data:`WILDCARD`
    (True).

    Raises:
        ValueError: an empty path or segment, or a bracket that is not ``[N]`` or ``[*]``.
    """
    out: list[tuple[str, bool]] = []
    for segment in path.split("."):
        if not segment:
            raise ValueError(f"invalid dot path {path!r}: segments must be non-empty")
        match = _PATH_SEGMENT.fullmatch(segment)
        if match is None:
            raise ValueError(
                f"invalid dot path {path!r}: {segment!r} is not a key that may end in [N] or [*]"
            )
        if match.group(1):
            out.append((match.group(1), False))
        out += ((WILDCARD if i == "*" else i, True) for i in _BRACKET.findall(match.group(2)))
    return out


def parse_path(path: str) -> tuple[str, ...]:
    """Split a transform path into keys, digit strings (``[N]``) and :data:`WILDCARD`.

    Raises:
        ValueError: an empty path or segment, or a bracket that is not ``[N]`` or ``[*]``.
    """
    return tuple(part for part, _ in _segments(path))


def _element_path(path: str) -> tuple[str, ...]:
    """A path of ``allow``, ``deny`` or ``rename``: its keys, ``[*]`` left out (those apply to
    every element of an array they meet anyway).

    Raises:
        ValueError: malformed, or with an ``[N]`` index.
    """
    parts = _segments(path)
    if any(bracketed and part != WILDCARD for part, bracketed in parts):
        raise ValueError(
            f"invalid dot path {path!r}: [N] picks one element, and allow, deny and rename apply "
            "to every element (write [*] or nothing)"
        )
    keys = tuple(part for part, bracketed in parts if not bracketed)
    if not keys:
        raise ValueError(f"invalid dot path {path!r}: name a key")
    return keys


def split_path(path: str) -> tuple[str, ...]:
    """Split a dot path; every segment must be non-empty.

    Raises:
        ValueError: an empty path or an empty segment.
    """
    parts = tuple(path.split("."))
    if not path or any(not p for p in parts):
        raise ValueError(f"invalid dot path {path!r}: segments must be non-empty")
    return parts


def build_tree(paths: Sequence[str]) -> PathTree:
    """Build a path tree from dot paths; a shorter path covers its longer ones."""
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        parts = _element_path(path)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = None
                break
            child = node.get(part, {})
            if child is None:  # already covered by a shorter path
                break
            node[part] = child
            node = child
    return root


def select_path(value: JSON, path: tuple[str, ...]) -> JSON:
    """Take the value at ``path``.

    Raises:
        SelectMissing: a key is absent, an index is out of range, or a scalar is in the way.
    """
    for part in path:
        if isinstance(value, dict):
            if part not in value:
                raise SelectMissing(part)
            value = value[part]
        elif isinstance(value, list) and part.isascii() and part.isdigit() and len(part) < 19:
            index = int(part)
            if index >= len(value):
                raise SelectMissing(part)
            value = value[index]
        else:
            raise SelectMissing(part)
    return value


def project_path(value: JSON, path: tuple[str, ...]) -> JSON:
    """:func:`select_path` where ``path`` may hold :data:`WILDCARD`: a ``[*]`` needs an
    array, and gives the list of what the rest of the path finds in each element, leaving
    out the elements where it finds nothing (RFC 9535 section 2.3.3: a wildcard selects the
    matches that exist).

    Raises:
        SelectMissing: the path is absent before its first ``[*]``, or a ``[*]`` meets
            something other than an array.
    """
    if WILDCARD not in path:
        return select_path(value, path)
    cut = path.index(WILDCARD)
    array = select_path(value, path[:cut])
    if not isinstance(array, list):
        raise SelectMissing(WILDCARD)
    rest = path[cut + 1 :]
    out = []
    for item in array:
        try:
            out.append(project_path(item, rest))
        except SelectMissing:
            continue
    return out


def allow_paths(value: JSON, tree: PathTree) -> JSON:
    """Keep only the paths in ``tree``, keeping their nesting; key order follows ``tree``."""
    if isinstance(value, list):
        return [allow_paths(item, tree) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, sub in tree.items():
            if key in value:
                out[key] = value[key] if sub is None else allow_paths(value[key], sub)
        return out
    return value


def deny_paths(value: JSON, tree: PathTree) -> JSON:
    """Remove the paths in ``tree``."""
    if isinstance(value, list):
        return [deny_paths(item, tree) for item in value]
    if isinstance(value, dict):
        # a copy of the whole object (one C call), then only the keys the tree names: the
        # tree is small, the object need not be (key order is kept either way)
        out = dict(value)
        for key, sub in tree.items():
            if key in out:
                if sub is None:
                    del out[key]
                else:
                    out[key] = deny_paths(out[key], sub)
        return out
    return value


def rename_key(value: JSON, parent: tuple[str, ...], old: str, new: str) -> JSON:
    """Rename key ``old`` to ``new`` in the object(s) at ``parent``, keeping key order.

    An existing ``new`` key is replaced. Copies only the objects along the path.
    """
    if isinstance(value, list):
        return [rename_key(item, parent, old, new) for item in value]
    if not isinstance(value, dict):
        return value
    if parent:
        head, rest = parent[0], parent[1:]
        if head not in value:
            return value
        out = dict(value)
        out[head] = rename_key(value[head], rest, old, new)
        return out
    if old not in value or old == new:
        return value
    return {(new if k == old else k): v for k, v in value.items() if k != new or k == old}


@dataclass(frozen=True)
class Transform:
    """A backend's compiled transforms, applied in the order select, allow/deny, rename."""

    select: tuple[str, ...] | None = None
    allow: PathTree | None = None
    deny: PathTree | None = None
    renames: tuple[tuple[tuple[str, ...], str, str], ...] = ()
    projects: bool = False  # ``select`` holds a [*]

    @classmethod
    def compile(
        cls,
        select: str | None = None,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
        rename: Mapping[str, str] | None = None,
    ) -> Transform:
        """Parse the config's transform fields.

        Raises:
            ValueError: a malformed path, both allow and deny, or a rename target with a dot.
        """
        if allow is not None and deny is not None:
            raise ValueError("use either allow or deny, not both")
        renames = []
        for source, target in (rename or {}).items():
            parts = _element_path(source)
            if not target or "." in target or "[" in target or "]" in target:
                raise ValueError(f"rename target {target!r} must be a single non-empty key")
            renames.append((parts[:-1], parts[-1], target))
        selected = parse_path(select) if select is not None else None
        return cls(
            select=selected,
            allow=build_tree(allow) if allow is not None else None,
            deny=build_tree(deny) if deny is not None else None,
            renames=tuple(renames),
            projects=selected is not None and WILDCARD in selected,
        )

    @property
    def is_identity(self) -> bool:
        return self.select is None and self.allow is None and self.deny is None and not self.renames

    def apply(self, value: JSON) -> JSON:
        """Shape a parsed body: :meth:`select_value`, then :meth:`shape`.

        Raises:
            SelectMissing: the ``select`` path is absent.
        """
        return self.shape(self.select_value(value))

    def select_value(self, value: JSON) -> JSON:
        """The ``select`` step alone (what other backends' references see).

        Raises:
            SelectMissing: the ``select`` path is absent.
        """
        if self.select is None:
            return value
        if self.projects:
            return project_path(value, self.select)
        return select_path(value, self.select)

    def shape(self, value: JSON) -> JSON:
        """The steps after ``select``: allow or deny, then rename."""
        if self.allow is not None:
            value = allow_paths(value, self.allow)
        elif self.deny is not None:
            value = deny_paths(value, self.deny)
        for parent, old, new in self.renames:
            value = rename_key(value, parent, old, new)
        return value
