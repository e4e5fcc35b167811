"""What a compiled policy contributes to a route, as precomputed values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reject:
    """A request step's decision to stop: the response to send instead of running the action."""

    status: int
    error: str
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """Header rewrites folded into one pass: drop these names, then append these pairs."""

    drop: frozenset[bytes] = frozenset()
    extra: tuple[tuple[bytes, bytes], ...] = ()

    def then(self, later: "HeaderEdit") -> "HeaderEdit":
        """This edit followed by `later`: later drops also remove our appended pairs."""
        kept = tuple(h for h in self.extra if h[0] not in later.drop)
        return HeaderEdit(self.drop | later.drop, kept + later.extra)

    @property
    def keeps_date(self) -> bool:
        """Whether the response keeps the Date the gateway adds: not when a policy removes or sets it."""
        return b"date" not in self.drop

    def apply(self, headers) -> list[tuple[bytes, bytes]]:
        drop = self.drop
        out = [h for h in headers if h[0] not in drop] if drop else list(headers)
        out.extend(self.extra)
        return out


# A request step decides from the exchange and the current time (seconds, monotonic); None continues.
Step = Callable[[object, float], Reject | None]


@dataclass(frozen=True, slots=True)
class Effects:
    steps: tuple[Step, ...] = ()
    request_headers: HeaderEdit = HeaderEdit()
    response_headers: HeaderEdit = HeaderEdit()

    def then(self, later: "Effects") -> "Effects":
        return Effects(
            self.steps + later.steps,
            self.request_headers.then(later.request_headers),
            self.response_headers.then(later.response_headers),
        )
