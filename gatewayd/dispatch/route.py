"""A route compiled for the request path: its name, its policy steps and its action."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    index: int
    policies: tuple[str, ...]
    action_kind: str  # respond | redirect | upstream
    target: str  # what `gatewayd routes` shows: upstream name, redirect URL or status
    steps: tuple  # request steps from policies, in phase order: step(exchange, now) -> None or an answer
    phases: tuple[bytes, ...]  # each step's phase name, for `server_timing: detailed`
    action: object  # async action(exchange)
