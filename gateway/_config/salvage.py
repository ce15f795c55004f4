"""What of an invalid config document can still be cross-checked. Pure.

Validation (pydantic) and compilation (cross-references) are two stages, and compilation
needs valid parts. So that one run reports everything findable, a document that fails
validation is pruned of its invalid parts and the rest is compiled too:

- an upstream, an endpoint or a backend that fails validation is left out whole (a
  backend's name, when it has one, is remembered, so references to it are not reported as
  unknown: they are fine once its own problems are fixed);
- an endpoint whose own setting fails (``deadline: 5``, an unknown key) keeps its route and
  backends: only that setting is left out. Settings that change what its backends may do
  (``path``, ``method``, ``passthrough``, ``backends``) leave the endpoint out instead;
- likewise a backend whose own setting fails (``required: yes``, an unknown key) is kept
  without that setting. Settings that identify the backend or make its call (``name``,
  ``upstream``, ``method``, ``path``, ``headers``, ``for_each``: the references to other
  parts are in them) leave the backend out instead;
- any other top-level section that fails is left out (its defaults take its place).

Left-out parts shift list indices: :meth:`Salvage.place` maps a problem found in the
pruned document back to the endpoint and backend indices of the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigProblem

# an endpoint setting whose value other checks depend on: when it fails, the whole
# endpoint is left out rather than compiled with a default in its place
_ENDPOINT_SHAPE = frozenset({"path", "method", "passthrough", "backends"})
# the same for a backend: what names it and makes its call (its references are in these)
_BACKEND_SHAPE = frozenset({"name", "upstream", "method", "path", "headers", "for_each"})

_PLACE = re.compile(r"^endpoints\[(\d+)\](?:\.backends\[(\d+)\])?")
_ENDPOINT_REF = re.compile(r"endpoints\[(\d+)\]")


@dataclass(frozen=True)
class LeftOut:
    """Parts of a document left out of compilation because they failed validation (their
    problems are reported already): checks that would refer to them are skipped.

    Attributes:
        upstreams: names of upstreams left out.
        all_upstreams: ``upstreams`` itself failed (not a mapping): no name is unknown.
        backends: by endpoint index in the pruned document, the names of its backends left
            out; None when one of them has no usable name (then no name is unknown there).
        policies: names of auth policies left out.
        all_policies: ``auth`` itself failed (not a mapping): no policy name is unknown.
    """

    upstreams: frozenset[str] = frozenset()
    all_upstreams: bool = False
    backends: Mapping[int, frozenset[str] | None] = field(default_factory=dict)
    policies: frozenset[str] = frozenset()
    all_policies: bool = False

    def upstream_left_out(self, name: str) -> bool:
        return self.all_upstreams or name in self.upstreams

    def policy_left_out(self, name: str) -> bool:
        return self.all_policies or name in self.policies

    def backends_left_out(self, endpoint: int) -> frozenset[str] | None:
        """The names of the endpoint's backends left out (empty: none); None: unknown."""
        return self.backends.get(endpoint, frozenset())


@dataclass(frozen=True)
class Salvage:
    """A pruned document, what was left out of it, and where its parts were in the file.

    Attributes:
        data: the pruned document (plain YAML data), to validate and compile.
        left_out: what was left out.
        endpoints: for each endpoint of ``data``, its index in the file.
        backends: for each endpoint of ``data``, its backends' indices in the file.
    """

    data: dict[str, Any]
    left_out: LeftOut
    endpoints: tuple[int, ...]
    backends: tuple[tuple[int, ...], ...]

    def place(self, problem: ConfigProblem) -> ConfigProblem:
        """The problem with the endpoint and backend indices of the file."""

        def path(match: re.Match[str]) -> str:
            ei = int(match.group(1))
            out = f"endpoints[{self.endpoints[ei]}]"
            if match.group(2) is not None:
                out += f".backends[{self.backends[ei][int(match.group(2))]}]"
            return out

        def ref(match: re.Match[str]) -> str:
            return f"endpoints[{self.endpoints[int(match.group(1))]}]"

        return ConfigProblem(
            problem.file,
            _PLACE.sub(path, problem.path, count=1),
            _ENDPOINT_REF.sub(ref, problem.message),
        )


def salvage(data: dict[str, Any], error_locs: Iterable[tuple[int | str, ...]]) -> Salvage | None:
    """Prune ``data`` (a document that failed validation) of the parts at ``error_locs``
    (pydantic error locations). None when nothing is left worth compiling: the error is
    about the document as a whole."""
    drop_upstreams: set[str] = set()
    all_upstreams = False
    drop_endpoints: set[int] = set()
    drop_backends: dict[int, set[int]] = {}
    drop_endpoint_keys: dict[int, set[str]] = {}
    drop_backend_keys: dict[tuple[int, int], set[str]] = {}
    drop_top: set[str] = set()
    drop_policies: set[str] = set()
    all_policies = False
    for loc in error_locs:
        if not loc or not isinstance(loc[0], str):
            return None
        top = loc[0]
        if top == "upstreams":
            if len(loc) == 1:
                all_upstreams = True
            else:
                drop_upstreams.add(str(loc[1]))
        elif top == "endpoints":
            if len(loc) == 1 or not isinstance(loc[1], int):
                return None  # not a list: there is no endpoint to check
            ei = loc[1]
            key = loc[2] if len(loc) > 2 else None
            if key == "backends" and len(loc) > 3 and isinstance(loc[3], int):
                setting = loc[4] if len(loc) > 4 else None
                if isinstance(setting, str) and setting not in _BACKEND_SHAPE:
                    drop_backend_keys.setdefault((ei, loc[3]), set()).add(setting)
                else:
                    drop_backends.setdefault(ei, set()).add(loc[3])
            elif isinstance(key, str) and key not in _ENDPOINT_SHAPE:
                drop_endpoint_keys.setdefault(ei, set()).add(key)
            else:
                drop_endpoints.add(ei)
        elif top == "auth":
            if len(loc) == 1:
                all_policies = True
            else:
                drop_policies.add(str(loc[1]))
        elif top == "version":
            continue  # replaced below: the rest of the document can still be checked
        else:
            drop_top.add(top)

    pruned: dict[str, Any] = {k: v for k, v in data.items() if k not in drop_top}
    pruned["version"] = 1
    policies = pruned.get("auth")
    if all_policies:
        pruned.pop("auth", None)
    elif isinstance(policies, dict):
        pruned["auth"] = {k: v for k, v in policies.items() if str(k) not in drop_policies}
    upstreams = pruned.get("upstreams")
    if all_upstreams:
        pruned.pop("upstreams", None)
    elif isinstance(upstreams, dict):
        pruned["upstreams"] = {k: v for k, v in upstreams.items() if str(k) not in drop_upstreams}

    raw_endpoints = pruned.get("endpoints")
    endpoints: list[Any] = []
    endpoint_places: list[int] = []
    backend_places: list[tuple[int, ...]] = []
    left_out_backends: dict[int, frozenset[str] | None] = {}
    for ei, endpoint in enumerate(raw_endpoints if isinstance(raw_endpoints, list) else []):
        if ei in drop_endpoints or not isinstance(endpoint, dict):
            continue
        dropped = drop_backends.get(ei, set())
        raw_backends = endpoint.get("backends")
        if not isinstance(raw_backends, list):
            continue
        kept = [bi for bi in range(len(raw_backends)) if bi not in dropped]
        if not kept:
            continue
        names: set[str] | None = set()
        for bi in dropped:
            name = raw_backends[bi].get("name") if isinstance(raw_backends[bi], dict) else None
            if isinstance(name, str) and names is not None:
                names.add(name)
            else:
                names = None
        if names is None or names:
            left_out_backends[len(endpoints)] = frozenset(names) if names is not None else None
        omit = drop_endpoint_keys.get(ei, set())
        endpoint = {k: v for k, v in endpoint.items() if k not in omit}
        endpoint["backends"] = [
            _without(raw_backends[bi], drop_backend_keys.get((ei, bi), set())) for bi in kept
        ]
        endpoints.append(endpoint)
        endpoint_places.append(ei)
        backend_places.append(tuple(kept))
    if "endpoints" in pruned:
        pruned["endpoints"] = endpoints
    return Salvage(
        pruned,
        LeftOut(
            frozenset(drop_upstreams),
            all_upstreams,
            left_out_backends,
            frozenset(drop_policies),
            all_policies,
        ),
        tuple(endpoint_places),
        tuple(backend_places),
    )


def _without(part: Any, keys: set[str]) -> Any:
    """``part`` (a mapping, else as it is) less ``keys``."""
    if not keys or not isinstance(part, dict):
        return part
    return {k: v for k, v in part.items() if k not in keys}
