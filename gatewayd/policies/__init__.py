"""Named policies: each kind is one module that compiles its config into `Effects`.

A route's policies are compiled once, when the config compiles, and merged into the route's
precomputed data: request steps run in order before the action (each may stop the request with a
response), and header edits are folded into single drop-sets and tuples. Adding a policy kind is
adding one module here and one entry in `KINDS` (and its shape in the schema); the dispatcher
does not change.
"""

from __future__ import annotations

from collections.abc import Callable

from . import headers
from .effects import Effects, HeaderEdit, Reject

# kind name in gateway.yaml -> compile(spec) -> Effects
KINDS: dict[str, Callable[[dict], Effects]] = {
    "headers": headers.compile_policy,
}


def compile_policy(spec: dict) -> Effects:
    """One named policy bundle (a mapping of kind -> spec) into merged effects."""
    effects = Effects()
    for kind, kind_spec in spec.items():
        effects = effects.then(KINDS[kind](kind_spec))
    return effects


__all__ = ["Effects", "HeaderEdit", "Reject", "KINDS", "compile_policy"]
