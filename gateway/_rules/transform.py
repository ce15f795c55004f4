"""Shaping one backend's JSON result: select, then allow or deny, then rename (pure).

Paths are dot paths (``data.items``); on ``select`` a segment of digits indexes an array.
``allow``/``deny``/``rename`` apply to each element when they meet an array. No function
here mutates its input or raises on arbitrary JSON, except :func:`select_path`, which
raises :class:`SelectMissing` when the path is absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

JSON: TypeAlias = Any
"""A value as parsed by orjson: dict, list, str, int, float, bool or None."""

# A path tree: key -> subtree, or None where the whole value under the key is meant.
PathTree: TypeAlias = Mapping[str, "PathTree | None"]


class SelectMissing(LookupError):
    """The ``select`` path is not in the response body."""


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
        parts = split_path(path)
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
        out = {}
        for key, item in value.items():
            if key in tree:
                sub = tree[key]
                if sub is None:
                    continue
                out[key] = deny_paths(item, sub)
            else:
                out[key] = item
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
            parts = split_path(source)
            if not target or "." in target:
                raise ValueError(f"rename target {target!r} must be a single non-empty key")
            renames.append((parts[:-1], parts[-1], target))
        return cls(
            select=split_path(select) if select is not None else None,
            allow=build_tree(allow) if allow is not None else None,
            deny=build_tree(deny) if deny is not None else None,
            renames=tuple(renames),
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
        return value if self.select is None else select_path(value, self.select)

    def shape(self, value: JSON) -> JSON:
        """The steps after ``select``: allow or deny, then rename."""
        if self.allow is not None:
            value = allow_paths(value, self.allow)
        elif self.deny is not None:
            value = deny_paths(value, self.deny)
        for parent, old, new in self.renames:
            value = rename_key(value, parent, old, new)
        return value
