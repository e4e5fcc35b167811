"""The part of a config that passes the schema, taken from a file that does not, so that `semantic.check`
can run on it and `gatewayd check` reports every problem of a file in one run.

What fails is taken out at the depth where taking it out is neutral, that is, where it can neither hide
nor invent another problem:

- a broken route is left out (its index kept, so locations stay right);
- a broken upstream is replaced by a valid stand-in, and a broken policy is left out with its name
  kept (`load` adds it back as an empty bundle), so routes that name them still resolve; the policy is
  not replaced because a stand-in would have to be valid for every policy kind the schema has;
- in `server`, `observability` and `cluster`, unknown keys are dropped, and any other broken key is dropped as
  a whole (its default applies), up to the whole section.
"""

from __future__ import annotations

import copy

from .source import Path
from .validate import invalid_nodes

SECTIONS = ("server", "observability", "cluster", "upstreams", "policies", "routes")
_STAND_IN_UPSTREAM = {"targets": ["http://invalid.invalid"]}
_STAND_IN_ROUTE = {"match": {"path": "/"}, "respond": {}}  # holds a left-out route's place while validating
_ROUNDS = 10  # each round takes out whole nodes, a level up at most from the last: more than the schema's depth


def salvage(data: object) -> tuple[dict, frozenset[int], frozenset[str]] | None:
    """(the schema-valid data, indexes of routes left out, names of policies left out), or None when
    too little is left to check (no routes, or a section that is not a mapping)."""
    if not isinstance(data, dict) or not isinstance(data.get("routes"), list):
        return None
    rest = copy.deepcopy({k: data[k] for k in SECTIONS if k in data}) | {"version": 1}
    skip: set[int] = set()
    policies: set[str] = set()
    for _ in range(_ROUNDS):
        nodes = invalid_nodes(rest)
        if not nodes:
            return rest, frozenset(skip), frozenset(policies)
        for path, keys in nodes:
            section, entry = (path + (None, None))[:2]
            if section == "routes" and entry is not None:
                skip.add(entry)
                rest["routes"][entry] = _STAND_IN_ROUTE
            elif section == "upstreams" and entry is not None:
                rest["upstreams"][entry] = _STAND_IN_UPSTREAM
            elif section == "policies" and entry is not None:
                policies.add(entry)
                rest["policies"].pop(entry, None)
            elif keys and isinstance(node := _node(rest, path), dict):  # unknown keys, or invalid names
                for key in keys:
                    node.pop(key, None)
            elif section in ("server", "observability", "cluster"):
                _drop(rest, path)
            else:
                return None
    return None


def _node(data: dict, path: Path):
    """The node at `path`, or None when an earlier change of this round took it out."""
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _drop(data: dict, path: Path) -> None:
    """Take out the node at `path`, or the list it is an item of (a list with a hole would shift the
    locations of the items after it)."""
    while isinstance(path[-1], int):
        path = path[:-1]
    parent = _node(data, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)
