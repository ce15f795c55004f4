"""Collections in an aggregated response (pure): arrays concatenated under one key, the
merged value of a group, each ``for_each`` result placed ``into`` its element, and the
endpoint's ``shape``.

An endpoint that uses none of these has no :class:`CollectionsPlan` and is merged by
:func:`~gateway._rules.aggregate.merge` alone (the hot path); one that does is merged here,
in the same config order, by :meth:`CollectionsPlan.body`:

1. **merge** (:func:`merge_collected`): as :func:`~gateway._rules.aggregate.merge`, but
   with ``merge: {arrays: concat}`` an array meeting an array under one key (a group, a
   top-level key of two merged objects, or a key of two objects sharing a group) is
   concatenated, the earlier backend's elements first, whatever the order the answers
   arrived in. The merge stays shallow: objects deeper down are not merged, and any other
   meeting (an array and a non-array, two objects below the top of a group) is won by the
   later backend, as without ``concat``. A backend with ``into`` has no place of its own.
2. **into** (:func:`place_into`): each result of a ``for_each`` backend with ``into`` goes
   into the element of the merged body's array its value came from, by index, so the order
   the calls finished in changes nothing. Elements are copied where they change, never
   mutated: the merged body shares its values with the backends' results. A result with
   no place is never dropped quietly (:meth:`CollectionsPlan.settle`): the backend's
   outcome, or its failed items, say so before the status rules run.
3. **shape**: the endpoint's ``select``, ``allow``/``deny``, ``rename``
   (:class:`~gateway._rules.transform.Transform`) on the whole body.

A group reference (``{orders[*].product_id}``, ``orders`` a ``group``) reads
:func:`group_value`: what step 1 puts under the group's key, from the group's backends
alone, before any ``into``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Final, Literal

from .aggregate import BackendResult, BodyBuilder, Outcome, Placement
from .jsonvalue import json_kind
from .template import Segment
from .transform import JSON, Transform

ItemErrors = Literal["fail", "skip", "null"]
"""``on_item_error``: what a failed call of a ``for_each`` backend does."""

FAIL: Final = "fail"
SKIP: Final = "skip"
NULL: Final = "null"


@dataclass(frozen=True)
class ItemResults:
    """The results of a ``for_each`` backend whose failed calls do not fail it
    (``on_item_error: skip`` or ``"null"``): one value per element, in element order
    (``None`` where the call failed), and which calls failed."""

    values: tuple[JSON, ...]
    failed: frozenset[int]
    mode: ItemErrors

    def as_list(self) -> list[JSON]:
        """The list the backend contributes: failed elements left out (``skip``) or
        ``null`` (``"null"``)."""
        if self.mode == SKIP:
            return [v for i, v in enumerate(self.values) if i not in self.failed]
        return list(self.values)


def listed(value: JSON) -> JSON:
    """A result's value as the body shows it (:class:`ItemResults` as its list)."""
    return value.as_list() if isinstance(value, ItemResults) else value


@dataclass(frozen=True)
class GroupPlan:
    """A ``group`` key and its backends (positions in the endpoint, in config order)."""

    name: str
    members: tuple[int, ...]


@dataclass(frozen=True)
class Reader:
    """A backend that references groups: the backends it references directly (each must
    succeed, as any dependency) and the groups it reads (each needs a value)."""

    direct: tuple[int, ...]
    groups: tuple[int, ...]  # positions in CollectionsPlan.groups


@dataclass(frozen=True)
class IntoPlan:
    """A ``for_each`` backend's ``into``: the array in the merged body (a path of keys and
    indexes) and the key path inside each element where its result goes; ``text``: the
    ``into`` as written, for reasons."""

    index: int
    array: tuple[Segment, ...]
    key: tuple[str, ...]
    text: str = ""


@dataclass(frozen=True)
class Unplaced:
    """Why results of an ``into`` backend found no place: ``elements`` that cannot take
    theirs (not an object, or something other than an object on the key path), or, when
    empty, the whole array (gone, or no longer one element per call)."""

    reason: str
    elements: frozenset[int] = frozenset()


@dataclass(frozen=True)
class CollectionsPlan:
    """What an endpoint's merge does beyond :func:`~gateway._rules.aggregate.merge`.

    Group ``i``'s merged value is offered to references as result number ``first_slot + i``
    (after the backends' own), so a template reads a group as it reads a backend.
    """

    first_slot: int
    concat_arrays: bool = False
    groups: tuple[GroupPlan, ...] = ()
    readers: Mapping[int, Reader] = field(default_factory=dict)
    into: tuple[IntoPlan, ...] = ()
    shape: Transform | None = None
    # backends that may change an array an into fills (index of the into backend, message)
    warnings: tuple[tuple[int, str], ...] = ()

    @property
    def embedded(self) -> frozenset[int]:
        """Backends whose results go ``into`` elements, not into the body themselves."""
        return frozenset(i.index for i in self.into)

    @cached_property
    def skip_groups(self) -> dict[int, tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]]:
        """For :func:`~gateway._rules.graph.skipped_by_condition`: each reader's direct
        dependencies and the members of each group it reads."""
        return {
            i: (r.direct, tuple(self.groups[g].members for g in r.groups))
            for i, r in self.readers.items()
        }

    def body(self, placements: Sequence[Placement], results: Sequence[BackendResult]) -> JSON:
        """Merge, place ``into``, then shape (results as :meth:`settle` leaves them).

        Raises:
            SelectMissing: the shape's ``select`` found nothing in the merged body.
        """
        body: JSON = merge_collected(placements, results, self.concat_arrays, self.embedded)
        if self.into:
            body = place_into(body, self.into, placements, results)[0]
        return self.shaped(body)

    def shaped(self, body: JSON) -> JSON:
        """``body`` after the endpoint's ``shape``.

        Raises:
            SelectMissing: the shape's ``select`` found nothing in ``body``.
        """
        return body if self.shape is None else self.shape.apply(body)

    def settle(
        self, placements: Sequence[Placement], results: Sequence[BackendResult]
    ) -> tuple[Sequence[BackendResult], BodyBuilder]:
        """The results once every ``into`` is placed, and what builds the body from them.

        An ``into`` backend whose results cannot all be placed is not ``ok`` as if they
        were: the array gone or changed by another backend fails it (outcome
        ``invalid_reference``, its ``default`` then goes into every element); an element
        that cannot take its result is a failed item, under ``on_item_error`` as a failed
        call is (``fail``: the backend fails; ``skip``: the element is left out;
        ``"null"``: it stays as it is), counted in ``debug``'s ``failed_items``.
        """
        if not self.into:
            return results, self.body
        merged = merge_collected(placements, results, self.concat_arrays, self.embedded)
        body, unplaced = place_into(merged, self.into, placements, results)
        if unplaced:
            settled = list(results)
            for index, miss in unplaced.items():
                settled[index] = _unplaced(results[index], miss)
            results = settled
            body = place_into(merged, self.into, placements, results)[0]
        return results, lambda _placements, _results: self.shaped(body)


def _unplaced(result: BackendResult, miss: Unplaced) -> BackendResult:
    value = result.value
    if miss.elements and isinstance(value, ItemResults):
        return replace(result, value=replace(value, failed=value.failed | miss.elements))
    return replace(
        result, outcome=Outcome.INVALID_REFERENCE, value=None, selected=None, detail=miss.reason
    )


def _put(body: dict[str, Any], key: str, value: JSON, concat: bool) -> None:
    if concat:
        existing = body.get(key)
        if isinstance(existing, list) and isinstance(value, list):
            body[key] = existing + value
            return
    body[key] = value


def _contribution(place: Placement, result: BackendResult) -> tuple[bool, JSON]:
    """Whether a backend puts a value in the body, and which (as in ``merge``)."""
    if result.outcome == Outcome.OK:
        return True, listed(result.value)
    if result.outcome == Outcome.SKIPPED or not place.has_default:
        return False, None
    return True, place.default


def merge_collected(
    placements: Sequence[Placement],
    results: Sequence[BackendResult],
    concat: bool,
    embedded: frozenset[int] = frozenset(),
) -> dict[str, Any]:
    """:func:`~gateway._rules.aggregate.merge`, with arrays concatenated when ``concat``
    (see the module docstring) and the ``embedded`` backends left out. Never mutates a
    value: objects and arrays are copied where two meet."""
    body: dict[str, Any] = {}
    for index, (place, result) in enumerate(zip(placements, results, strict=True)):
        if index in embedded:
            continue
        present, value = _contribution(place, result)
        if not present:
            continue
        if place.group is not None:
            existing = body.get(place.group)
            if isinstance(existing, dict) and isinstance(value, dict):
                merged = dict(existing)
                for key, item in value.items():
                    _put(merged, key, item, concat)
                body[place.group] = merged
            else:
                _put(body, place.group, value, concat)
        elif isinstance(value, dict):
            for key, item in value.items():
                _put(body, key, item, concat)
        else:
            _put(body, place.name, value, concat)
    return body


def group_value(
    group: GroupPlan,
    placements: Sequence[Placement],
    results: Sequence[BackendResult | None],
    concat: bool,
) -> tuple[bool, JSON]:
    """Whether the group has a value once its backends have finished, and that value: what
    the merge puts under the group's key from them alone (failed ones contribute their
    ``default``). No value: every one failed without a default, or was skipped."""
    members = [(placements[i], results[i]) for i in group.members]
    finished = [(p, r) for p, r in members if r is not None]
    if not any(_contribution(p, r)[0] for p, r in finished):
        return False, None
    body = merge_collected([p for p, _ in finished], [r for _, r in finished], concat)
    return True, body[group.name]


def _at(body: JSON, path: Sequence[Segment]) -> JSON:
    """The value at ``path`` (keys and indexes), or None when it is not there."""
    for seg in path:
        if isinstance(seg, int):
            if not isinstance(body, list) or seg >= len(body):
                return None
            body = body[seg]
        elif isinstance(body, dict):
            body = body.get(seg)
        else:
            return None
    return body


def _replaced(body: JSON, path: Sequence[Segment], value: JSON) -> JSON:
    """``body`` with the value at ``path`` (which exists) replaced, copying each object and
    array along the path."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy: Any = list(body) if isinstance(body, list) else dict(body)
    copy[head] = _replaced(body[head], rest, value)
    return copy


def set_in(element: JSON, key: Sequence[str], value: JSON) -> JSON:
    """``element`` (an object) with ``value`` at the key path, creating the objects the path
    needs and copying the ones it passes; None (never such a copy) when something other
    than an object is where the path goes (:func:`blocked` says what)."""
    if not isinstance(element, dict):
        return None
    copy = dict(element)
    head = key[0]
    if len(key) == 1:
        copy[head] = value
        return copy
    inner = copy.get(head, {})
    if not isinstance(inner, dict):
        return None
    copy[head] = set_in(inner, key[1:], value)
    return copy if copy[head] is not None else None


def blocked(element: JSON, key: Sequence[str], index: int) -> str:
    """What stops :func:`set_in` in element ``index``, in JSON's words."""
    where = f"element {index}"
    for name in key[:-1]:
        if not isinstance(element, dict):
            break
        element = element.get(name, {})
        where += f".{name}"
    return f"{where} is {json_kind(element)}, not an object"


def place_into(
    body: dict[str, Any],
    intos: Sequence[IntoPlan],
    placements: Sequence[Placement],
    results: Sequence[BackendResult],
) -> tuple[dict[str, Any], dict[int, Unplaced]]:
    """Place each ``into`` backend's results in the elements of its array, in config order;
    and say, per backend, what found no place.

    For each array, every backend filling it is applied to the elements by their index in
    the array as it was merged, then the elements of a ``skip`` backend's failed items are
    dropped. A backend that succeeded puts its result ``i`` into element ``i`` (a failed
    call: ``null`` under ``"null"``); one that failed as a whole puts its ``default``, if it
    has one, into every element it can; without one, or skipped, it changes nothing.
    Unplaced (see :class:`Unplaced`), for a backend that succeeded: the array is not there
    or no longer has one element per call (another backend in config order changed it;
    nothing of the backend is placed), or elements cannot take their result (those are
    left as they are, or dropped under ``skip``).
    """
    arrays: dict[tuple[Segment, ...], list[IntoPlan]] = {}
    for into in intos:
        arrays.setdefault(into.array, []).append(into)
    unplaced: dict[int, Unplaced] = {}
    out: JSON = body
    for path, fillers in arrays.items():
        array = _at(out, path)
        if not isinstance(array, list):
            for into in fillers:
                if results[into.index].outcome == Outcome.OK:
                    what = "not in the response" if array is None else json_kind(array)
                    unplaced[into.index] = Unplaced(f"into {into.text}: the array is {what}")
            continue
        elements = list(array)
        dropped: set[int] = set()
        for into in fillers:
            place, result = placements[into.index], results[into.index]
            if result.outcome == Outcome.OK:
                value = result.value
                items = value if isinstance(value, ItemResults) else None
                values = items.values if items is not None else value
                calls = len(values) if isinstance(values, list | tuple) else 0
                if calls != len(elements):
                    unplaced[into.index] = Unplaced(
                        f"into {into.text}: the array has {len(elements)} elements, not the "
                        f"{calls} the calls were made for (another backend changed it)"
                    )
                    continue
                stuck: dict[int, str] = {}
                for i, item in enumerate(values):
                    if items is not None and i in items.failed:
                        if items.mode == SKIP:
                            dropped.add(i)
                            continue
                        item = None
                    placed = set_in(elements[i], into.key, item)
                    if placed is None:
                        stuck[i] = blocked(elements[i], into.key, i)
                        if items is not None and items.mode == SKIP:
                            dropped.add(i)
                    else:
                        elements[i] = placed
                if stuck:
                    unplaced[into.index] = Unplaced(
                        f"into {into.text}: {stuck[min(stuck)]}", frozenset(stuck)
                    )
            elif result.outcome != Outcome.SKIPPED and place.has_default:
                for i, element in enumerate(elements):
                    placed = set_in(element, into.key, place.default)
                    if placed is not None:
                        elements[i] = placed
        if dropped:
            elements = [e for i, e in enumerate(elements) if i not in dropped]
        out = _replaced(out, path, elements)
    return out, unplaced


def failed_items(result: BackendResult) -> int:
    """How many calls of a ``for_each`` backend failed without failing it."""
    value = result.value
    return len(value.failed) if isinstance(value, ItemResults) else 0
