"""Compiling an endpoint's collections settings: ``merge``, group references, ``into``,
``on_item_error`` and ``shape`` (pure; see :mod:`gateway._rules.collect` for what they do).

:func:`group_slots` runs before the endpoint's backends are compiled, so that their
templates can name a group (:func:`link_group`); :func:`compile_collections` runs after,
checks every setting against the compiled backends and builds the endpoint's
:class:`~gateway._rules.collect.CollectionsPlan`, or None when the endpoint uses none of
these (its merge is then the hot path's). Every problem is collected, with its place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .._errors import ConfigProblem
from .._rules.collect import CollectionsPlan, GroupPlan, IntoPlan, Reader, blocked, set_in
from .._rules.template import (
    WILDCARD,
    Ref,
    Segment,
    TemplateSyntaxError,
    UnresolvedReference,
    parse_template,
    walk,
)
from .._rules.transform import Transform
from .load import format_path
from .model import EndpointConfig, GatewayConfig, ShapeConfig, endpoint_merge
from .plan import BackendPlan


@dataclass(frozen=True)
class GroupSlot:
    """A group as references see it: the result number its merged value is offered as
    (after the endpoint's backends), and its members."""

    slot: int
    plan: GroupPlan


def group_slots(endpoint: EndpointConfig) -> dict[str, GroupSlot]:
    """Every ``group`` of the endpoint's backends, in order of first use."""
    members: dict[str, list[int]] = {}
    for index, backend in enumerate(endpoint.backends):
        if backend.group:
            members.setdefault(backend.group, []).append(index)
    first = len(endpoint.backends)
    return {
        name: GroupSlot(first + position, GroupPlan(name, tuple(indexes)))
        for position, (name, indexes) in enumerate(members.items())
    }


def link_group(
    ref: Ref, own: int, names: Mapping[str, int], groups: Mapping[str, GroupSlot]
) -> Ref | str | None:
    """A reference to a group, linked to the group's slot; a problem with it (a message);
    or None when it is not a reference to a group (a backend or a parameter: linked as
    before).

    A name that is a backend and also the group of other backends is ambiguous: which one a
    reference means would depend on a rule the reader must remember. A backend alone in a
    group of its own name (``{name: orders, group: orders}``, common since before groups
    could be referenced) is the backend.
    """
    group = groups.get(ref.name)
    if group is None or ref.kind not in ("param", "backend"):
        return None
    members = group.plan.members
    if ref.name in names:
        if members == (names[ref.name],):
            return None
        return (
            f"{ref.text} is ambiguous: {ref.name!r} is a backend and the group of "
            f"{_listed(members, names)}; rename the backend or the group"
        )
    if own in members:
        return f"{ref.text} reads group {ref.name!r}, which this backend is part of"
    return dataclasses.replace(ref, kind="backend", index=group.slot)


def _listed(members: Sequence[int], names: Mapping[str, int]) -> str:
    by_index = {i: n for n, i in names.items()}
    return ", ".join(by_index.get(i, f"#{i}") for i in members)


def template_refs(backend: BackendPlan) -> list[Ref]:
    """Every reference of a backend's call: path, headers, body template and GraphQL
    variables."""
    return list(backend.refs)


def compile_collections(
    config: GatewayConfig,
    endpoint: EndpointConfig,
    backends: Sequence[BackendPlan] | None,
    groups: Mapping[str, GroupSlot],
    where: tuple[int | str, ...],
    file: str,
    problems: list[ConfigProblem],
) -> CollectionsPlan | None:
    """Check the endpoint's collections settings and build its plan.

    ``backends`` are the endpoint's compiled backends, or None when some failed to compile
    (their problems are reported; what needs them is checked once they are fixed).
    """

    def problem(at: tuple[int | str, ...], message: str) -> None:
        problems.append(ConfigProblem(file, format_path((*where, *at)), message))

    merge = endpoint_merge(config, endpoint)
    shape = _shape(endpoint.shape, problem) if endpoint.shape is not None else None
    if endpoint.passthrough:
        for key in ("merge", "shape"):
            if key in endpoint.model_fields_set:
                problem((key,), "not used by a passthrough endpoint (the body is streamed)")
    intos: dict[int, Ref] = {}
    for bi, be in enumerate(endpoint.backends):
        at: tuple[int | str, ...] = ("backends", bi)
        if endpoint.passthrough:
            for key in ("into", "on_item_error"):
                if key in be.model_fields_set:
                    problem((*at, key), "not used by a passthrough endpoint")
            continue
        if "on_item_error" in be.model_fields_set and not be.for_each:
            problem((*at, "on_item_error"), "only for a for_each backend (one call per element)")
        if be.into is None:
            continue
        if not be.for_each:
            problem((*at, "into"), "needs for_each: true (one call per element it fills)")
        elif be.group is not None:
            problem(
                (*at, "group"),
                "a backend with into puts its results into elements, not under a group",
            )
        parsed = _parse_into(be.into)
        if isinstance(parsed, str):
            problem((*at, "into"), parsed)
        elif be.for_each and be.group is None:
            intos[bi] = parsed
    if endpoint.passthrough or backends is None or len(backends) != len(endpoint.backends):
        return None

    first = len(backends)
    readers: dict[int, Reader] = {}
    for bi, backend in enumerate(backends):
        refs = [r for r in template_refs(backend) if r.kind == "backend" and r.index >= 0]
        slots = sorted({r.index - first for r in refs if r.index >= first})
        if slots:
            direct = sorted({r.index for r in refs if r.index < first})
            readers[bi] = Reader(tuple(direct), tuple(slots))
    plans = tuple(g.plan for g in sorted(groups.values(), key=lambda g: g.slot))
    into_plans: list[IntoPlan] = []
    concat = merge is not None and merge.arrays == "concat"
    warnings: list[tuple[int, str]] = []
    for bi, into in intos.items():
        messages: list[str] = []
        plan = _into_plan(bi, into, backends, plans, intos, messages.append)
        if plan is not None:
            owners = _owners(plan, into, backends, plans)
            messages += _static_elements(plan, into, owners, backends)
            for certain, message in _conflicts(plan, owners, backends, intos, concat):
                if certain:
                    messages.append(message)
                else:
                    warnings.append((bi, message))
            into_plans.append(plan)
        for message in messages:
            problem(("backends", bi, "into"), message)
    if not (
        concat
        or readers
        or into_plans
        or shape is not None
        or any(b.on_item_error != "fail" for b in backends)
    ):
        return None
    return CollectionsPlan(
        first_slot=first,
        concat_arrays=concat,
        groups=plans,
        readers=readers,
        into=tuple(into_plans),
        shape=shape,
        warnings=tuple(warnings),
    )


def _parse_into(text: str) -> Ref | str:
    """``orders[*].product`` as a reference (its head, and the path with one ``[*]``), or
    what is wrong with it."""
    shape = "write the array, [*], then the key to set, like orders[*].product"
    if "{" in text or "}" in text:
        return f"a path, without braces: {shape}"
    try:
        (ref,) = parse_template("{" + text + "}").refs
    except (TemplateSyntaxError, ValueError) as exc:
        return f"{exc}: {shape}"
    if ref.kind == "body":
        return (
            "into fills an array of the response (a group's or a backend's), not of the "
            f"client's body: {shape}"
        )
    if ref.kind not in ("param", "backend") or WILDCARD not in ref.path:
        return shape
    after = ref.path[ref.path.index(WILDCARD) + 1 :]
    if not after or not all(isinstance(seg, str) for seg in after):
        return f"name the key each element gets after [*] ({shape})"
    return ref


def _into_plan(
    index: int,
    into: Ref,
    backends: Sequence[BackendPlan],
    groups: Sequence[GroupPlan],
    intos: Mapping[int, Ref],
    problem: Callable[[str], None],
) -> IntoPlan | None:
    """Where in the merged body a backend's ``into`` array is, checked against the array
    its ``for_each`` reference walks."""
    cut = into.path.index(WILDCARD)
    array, key = into.path[:cut], into.path[cut + 1 :]
    walked = next((r for r in template_refs(backends[index]) if r.has_wildcard), None)
    if walked is None or walked.index < 0:
        return None  # for_each without a [*] reference: reported where it is
    walked_array = walked.path[: walked.path.index(WILDCARD)]
    if (walked.name, walked_array) != (into.name, array):
        wanted = _written(walked.name, walked_array)
        problem(
            f"fills {_written(into.name, array)}[*] but for_each walks {walked.text}: "
            f"into must name that array ({wanted}[*].KEY)"
        )
        return None
    first = len(backends)
    body_path: tuple[Segment, ...]
    if walked.index >= first:  # a group: its key in the body
        body_path = (groups[walked.index - first].name, *array)
    else:
        source = backends[walked.index]
        group = source.placement.group
        if walked.index in intos:
            problem(f"{source.name} puts its own results into elements: it has no array")
            return None
        if group is not None:
            shared = [b.name for b in backends if b.placement.group == group and b is not source]
            if shared:
                problem(
                    f"{source.name} shares group {group!r} with {', '.join(shared)}: the "
                    f"array in the response is the group's; walk the group instead "
                    f"({{{_written(group, array)}[*]...}})"
                )
                return None
            body_path = (group, *array)
        elif not array or isinstance(array[0], int):  # an array: under the backend's name
            body_path = (source.name, *array)
        else:  # an object: merged at the top level
            body_path = array
    return IntoPlan(index, body_path, tuple(str(k) for k in key), into.text[1:-1])


def _owners(
    plan: IntoPlan, into: Ref, backends: Sequence[BackendPlan], groups: Sequence[GroupPlan]
) -> tuple[int, ...]:
    """The backends whose values make the array an ``into`` fills: its group's, or the
    one its ``for_each`` reference walks."""
    walked = next(r for r in template_refs(backends[plan.index]) if r.has_wildcard)
    first = len(backends)
    if walked.index >= first:
        return groups[walked.index - first].members
    return (walked.index,)


def _static_elements(
    plan: IntoPlan, into: Ref, owners: Sequence[int], backends: Sequence[BackendPlan]
) -> list[str]:
    """An array that a static backend gives and whose elements cannot take a result (not
    objects, or not objects along the key path) would fail every request."""
    array = into.path[: into.path.index(WILDCARD)]
    messages = []
    for owner in owners:
        static = backends[owner].static
        if static is None:
            continue
        try:
            elements = walk(static.value, array)
        except UnresolvedReference:
            continue  # the reference's own problem
        if not isinstance(elements, list):
            continue
        for i, element in enumerate(elements):
            if set_in(element, plan.key, None) is None:
                messages.append(
                    f"in the static value of {backends[owner].name!r}, "
                    f"{blocked(element, plan.key, i)}: into {plan.text} sets a key in every "
                    "element"
                )
                break
    return messages


def _conflicts(
    plan: IntoPlan,
    owners: Sequence[int],
    backends: Sequence[BackendPlan],
    intos: Mapping[int, Ref],
    concat: bool,
) -> list[tuple[bool, str]]:
    """Other backends that can change the array an ``into`` fills, as the merge puts their
    values under its top-level key (at run time its results then find no place, and the
    backend fails): ``(certain, message)``; certain for a static value that does."""
    key, rest = plan.array[0], plan.array[1:]
    last = max(owners)
    found: list[tuple[bool, str]] = []
    for j, other in enumerate(backends):
        if j in owners or j in intos:
            continue
        group = other.placement.group
        if other.static is not None:
            value = other.static.value
            if group is not None:
                at_key, present = value, group == key
            elif isinstance(value, dict):
                at_key, present = value.get(key), key in value
            else:
                at_key, present = value, other.name == key
            if not present:
                continue
            if j > last:  # replaces the owners' value (or joins it), but a group's object
                # merges into theirs, key by key
                changes = not (
                    group is not None
                    and rest
                    and isinstance(at_key, dict)
                    and rest[0] not in at_key
                )
            else:  # replaced by the owners' value, but an array concat joins to theirs
                changes = concat and not rest and isinstance(at_key, list)
            if changes:
                found.append(
                    (
                        True,
                        f"the static value of {other.name!r} puts {key!r} in the response, "
                        f"which changes the array into {plan.text} fills; rename the key, or "
                        "give that backend a group",
                    )
                )
        elif (j > last or (concat and not rest)) and _may_carry(other, key, group):
            where, fix = (
                (f"has group {key!r}", "give it another group")
                if group is not None
                else ("merges an object at the top", "give it a group, or allow only other keys")
            )
            found.append(
                (
                    False,
                    f"warning: {other.name!r} {where}: a value it gives under {key!r} changes "
                    f"the array into {plan.text} fills, and this backend then fails "
                    f"(invalid_reference); {fix}",
                )
            )
    return found


def _may_carry(backend: BackendPlan, key: Segment, group: str | None) -> bool:
    """Whether a backend that makes calls may put a value under the top-level ``key``."""
    if group is not None:
        return group == key
    if backend.name == key:
        return True
    transform = backend.transform
    if transform.allow is None:
        return True
    return key in transform.allow or any(not p and new == key for p, _, new in transform.renames)


def _written(name: str, path: Sequence[Segment]) -> str:
    """A reference path as written: ``orders.items`` or ``orders[0]``."""
    out = name
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else f".{seg}"
    return out


def _shape(
    shape: ShapeConfig, problem: Callable[[tuple[int | str, ...], str], None]
) -> Transform | None:
    """The endpoint's shape, each field's problem reported at its key."""
    try:
        return Transform.compile(shape.select, shape.allow, shape.deny, shape.rename)
    except ValueError as combined:
        found = False
        for key, args in (
            ("select", {"select": shape.select}),
            ("allow", {"allow": shape.allow}),
            ("deny", {"deny": shape.deny}),
            ("rename", {"rename": shape.rename}),
        ):
            try:
                Transform.compile(**args)
            except ValueError as exc:
                problem(("shape", key), str(exc))
                found = True
        if not found:  # each is fine alone: allow and deny together
            problem(("shape", "allow"), str(combined))
        return None


def into_warnings(file: str, endpoint: int, plan: CollectionsPlan) -> list[ConfigProblem]:
    """``gateway check``'s warnings about backends that may change an array ``into``
    fills."""
    return [
        ConfigProblem(file, format_path(("endpoints", endpoint, "backends", bi, "into")), message)
        for bi, message in plan.warnings
    ]
