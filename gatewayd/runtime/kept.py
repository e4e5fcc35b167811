"""State that outlives one config generation: rate-limit budgets, verified tokens, fetched keys.

A policy asks for its state by a key made of everything that defines it (its name, kind and
spec); a reload that leaves the definition alone gets the same object back, so it neither hands out
fresh budgets nor forgets what it verified. A new config is compiled against a `Generation`;
`commit` makes it current once the swap is done, starts what is new (once the serving loop runs:
`start()` may create tasks) and closes what no policy asks for any more. A config that fails to compile is simply dropped with its generation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

log = logging.getLogger("gatewayd")


class Kept:
    def __init__(self):
        self._live: dict[Hashable, object] = {}
        self._running = False  # whether the event loop runs: states start their background work then

    def run(self) -> None:
        """Called on the serving loop once it runs: start the states of the config loaded before it."""
        self._running = True
        for obj in self._live.values():
            if hasattr(obj, "start"):
                _quietly(obj.start)

    def generation(self) -> "Generation":
        return Generation(self._live)

    def commit(self, generation: "Generation") -> None:
        """Make `generation` current: `start()` what it made, `close()` what it no longer holds."""
        for key, obj in self._live.items():
            if key not in generation.held and hasattr(obj, "close"):
                _quietly(obj.close)
        if self._running:
            for key, obj in generation.held.items():
                if key not in self._live and hasattr(obj, "start"):
                    _quietly(obj.start)
        self._live = dict(generation.held)

    def close(self) -> None:
        self.commit(Generation({}))

    def values(self):
        return self._live.values()


class Generation:
    """The kept state one compiled config holds."""

    def __init__(self, live: dict):
        self._live = live
        self.held: dict[Hashable, object] = {}

    def get(self, key: Hashable, make: Callable[[], object]):
        """The state kept under `key`, made by `make()` when no live generation has it."""
        obj = self.held.get(key)
        if obj is None:
            obj = self._live.get(key)
            if obj is None:
                obj = make()
            self.held[key] = obj
        return obj


def health(generation: "Generation") -> dict:
    """What the states a config holds report for /health, by policy name (states with a `health()`
    and a `policy` name: a `jwt` policy's JWKS URL, say)."""
    return {obj.policy: obj.health() for obj in generation.held.values() if hasattr(obj, "health")}


def _quietly(call) -> None:
    try:
        call()
    except Exception:
        log.exception("kept policy state failed to start or close")
