"""Named policies: each kind is one module that compiles its config into `Effects`.

A route's policies are compiled once, when the config compiles, and merged into the route's
precomputed data: request steps run in a fixed order of phases before the action (each may stop
the request with an answer), header edits are folded into single drop-sets and tuples, and action
wrappers (policies that need the body or the response) wrap the action once. Adding a policy kind
is adding one module here with `compile_policy(spec, ctx, name) -> Effects` (and, for what the
schema cannot say, `problems(spec, ctx) -> [(path within the spec, message)]`), one entry in
`KINDS`, and its shape in the schema; the dispatcher does not change.
"""

from __future__ import annotations

import importlib

from .auth import auth_step
from .context import CompileContext
from .effects import AUTH, PHASE_NAMES, Effects, HeaderEdit, Reject, Reply

# kind name in gateway.yaml -> its module in this package, in the order a route's kinds take effect
# (the phases of effects.py; `headers` edits the request the action sends and its response)
KINDS = {
    "cors": "cors",
    "api_key": "api_key",
    "jwt": "jwt_token",
    "rate_limit": "rate_limit",
    "validate": "validate",
    "cache": "cache",
    "headers": "headers",
}


def kind(name: str):
    """The module of policy kind `name`."""
    return importlib.import_module(f"{__name__}.{KINDS[name]}")


def compile_policy(name: str, spec: dict, ctx: CompileContext) -> Effects:
    """One named policy bundle (a mapping of kind -> spec) into merged effects."""
    effects = Effects()
    for kind_name, kind_spec in spec.items():
        effects = effects.then(kind(kind_name).compile_policy(kind_spec, ctx, name))
    return effects


def policy_problems(spec: dict, ctx: CompileContext) -> list[tuple[tuple, str]]:
    """What is wrong in a policy bundle beyond its shape: (path within the bundle, message) pairs."""
    found = []
    for kind_name, kind_spec in spec.items():
        check = getattr(kind(kind_name), "problems", None)
        if check is not None:
            found += [((kind_name, *path), message) for path, message in check(kind_spec, ctx)]
    return found


def run_order(policies: dict, names) -> list[tuple[str, str]]:
    """(kind, policy name) of a route's policies `names`, in the order they take effect."""
    order = list(KINDS)
    found = [(kind, name) for name in names for kind in policies.get(name, {})]
    return sorted(found, key=lambda pair: order.index(pair[0]))


def route_steps(effects: Effects) -> tuple[tuple, tuple]:
    """A route's request steps in phase order, and the phase name of each (for detailed Server-Timing)."""
    steps = list(effects.steps)
    if effects.authenticators:
        steps.append((AUTH, auth_step(effects.authenticators)))
    steps.sort(key=lambda s: s[0])  # stable: steps of one phase keep the route's order
    return tuple(step for _, step in steps), tuple(PHASE_NAMES[phase] for phase, _ in steps)


__all__ = ["CompileContext", "Effects", "HeaderEdit", "Reject", "Reply", "KINDS", "compile_policy", "policy_problems", "route_steps", "run_order"]
