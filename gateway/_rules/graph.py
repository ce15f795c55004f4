"""Backend dependency graphs and request conditions (pure).

A backend depends on every backend its templates reference; the graph must be acyclic.
Conditions (``when:``) decide from the request alone whether a backend is called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as a path ``[a, b, c, a]``, or None if the graph is acyclic.

    Names without an entry in ``deps`` have no dependencies. Nodes are visited in the
    mapping's order, so the reported cycle is deterministic.
    """
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in deps.get(node, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in deps:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def skipped_by_condition(
    deps: Sequence[Sequence[int]],
    holds: Sequence[bool],
    groups: Mapping[int, tuple[Sequence[int], Sequence[Sequence[int]]]] | None = None,
) -> list[bool]:
    """Which backends are skipped: their condition fails, or a dependency is skipped.

    ``deps[i]`` are the indexes backend ``i`` depends on; the graph must be acyclic. A
    backend that reads groups is in ``groups`` with ``(direct, members)``: the backends it
    references directly, and the members of each group it reads. It is skipped when a
    direct dependency is, or when every member of one group is (a group with one member
    left still has a value).
    """
    skipped: list[bool | None] = [None] * len(deps)

    def decide(i: int) -> bool:
        known = skipped[i]
        if known is None:
            reads = groups.get(i) if groups else None
            if reads is None:
                known = not holds[i] or any(decide(d) for d in deps[i])
            else:
                direct, members = reads
                known = (
                    not holds[i]
                    or any(decide(d) for d in direct)
                    or any(all(decide(m) for m in group) for group in members)
                )
            skipped[i] = known
        return known

    return [decide(i) for i in range(len(deps))]


@dataclass(frozen=True)
class Condition:
    """``when:``: a query parameter or header is present, equal to a value, or in a set.

    ``source`` is ``query`` or ``header`` (header names lower-case).
    """

    source: str
    name: str
    equals: str | None = None
    one_of: frozenset[str] | None = None

    def describe(self) -> str:
        """``query.include == loyalty``, ``header.x-tier in [a, b]``, ``query.beta``."""
        subject = f"{self.source}.{self.name}"
        if self.equals is not None:
            return f"{subject} == {self.equals}"
        if self.one_of is not None:
            return f"{subject} in [{', '.join(sorted(self.one_of))}]"
        return subject

    def holds(self, query: Mapping[str, Sequence[str]], headers: Mapping[str, str]) -> bool:
        if self.source == "query":
            values = query.get(self.name)
            value = values[0] if values else None
        else:
            value = headers.get(self.name)
        if value is None:
            return False
        if self.equals is not None:
            return value == self.equals
        if self.one_of is not None:
            return value in self.one_of
        return True


def all_hold(
    conditions: Sequence[Condition],
    query: Mapping[str, Sequence[str]],
    headers: Mapping[str, str],
) -> bool:
    return all(c.holds(query, headers) for c in conditions)
