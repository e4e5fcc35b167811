"""A worker's decisions for one rate-limit key: admit from the tokens it holds, or on a bounded debt.

The budget is a token bucket: `limit` tokens per `per`, holding up to `max(burst, 1)`, full at first;
a request takes one. A token bucket rather than a sliding window or a counter per period because
budgets move between processes: the host holds each key's bucket in its store, and each worker leases
whole tokens from it and spends them alone, which a count of tokens expresses directly (a window of
timestamps cannot be split between workers, a fixed period's counter admits twice the limit around
its edge). A steady overload for T seconds admits limit×T/per + the bucket's size.

A worker's `Share` of a key is its credit (tokens leased and not yet spent) or its debt (requests
it admitted before their tokens came), its belief of what the host bucket holds (what it held at the
last lease, plus what accrued since), and whether that bucket was found empty (`dry_until`):

- credit left: admit, spending one; under half a slice left (and not dry), ask for a lease;
- no credit, not dry: admit on debt while it owes less than a slice (a cold key, a lease in flight),
  or less than the host bucket is believed to hold (a burst), and ask for a lease: its tokens repay
  the debt before they count as credit;
- otherwise refuse: the host bucket is empty until `dry_until`, or the debt is all it may owe.

A slice S is max(1, ceil(rate × 10 ms)) tokens; a lease fills the share up to S. The host bucket
holds B = max(burst, 1) + S - 1 tokens: S - 1 more than the policy's so that tokens keep accruing
between two leases at high rates (up to 100 a second S is 1 and the two are the same). A share
left owing when the bucket was empty is dry until its next token is due, counted from when it asked
(so that a lease as slow as that one finds the token), and is leased for again then (`lease.py`).

Tokens are never made: what a worker admits is what it was granted, plus at most S it held before,
plus what it owes, which the following grants repay first. So over any T seconds one worker admits at
most limit×T/per + B + 2S: its belief of the host bucket is exact (nobody else draws from it), so it
owes beyond a slice only what the bucket holds. With W workers a belief may count tokens another
worker took since, so a burst sprayed over all of them within one lease (~1 ms) can be admitted up to
W times, and owed: at most limit×T/per + B + W×(B + S) over any T, and a steady overload at least
limit×T/per less what the shares hold at the end. `trust_belief=False` admits on debt only up to a
slice (limit×T/per + B + 2W×S with W workers) and refuses the rest of a burst until the lease comes
back: `bench/ratelimit.py` measures both.

Everything here decides from its arguments and `now` (seconds): no clock, no store, no I/O. The
host bucket's own arithmetic, `take_tokens`, is defined with the store interface (`store/base.py`),
since every store runs it inside its atomic `draw`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..store.base import take_tokens

# a slice is the tokens of this many seconds at the policy's rate (at least 1)
SLICE_S = 0.01
# a share idle this long is settled (its credit given back, its debt repaid), then dropped, as new keys come
IDLE_S = 10.0

__all__ = ["Budget", "Share", "admitter", "settle", "take_tokens", "want"]


@dataclass(frozen=True, slots=True)
class Budget:
    """One policy's numbers, derived once from `limit`, `per` and `burst`."""

    rate: float  # tokens a second
    capacity: int  # the policy's bucket: max(burst, 1)
    slice: int  # tokens a lease fills a share up to, and what a share may owe whatever it believes
    host_capacity: int  # the host bucket: capacity + slice - 1

    @classmethod
    def of(cls, limit: int, per: float, burst: int = 0) -> Budget:
        rate = limit / per
        capacity = max(burst, 1)
        slice_ = max(1, math.ceil(rate * SLICE_S - 1e-9))
        return cls(rate, capacity, slice_, capacity + slice_ - 1)

    def bound(self, seconds: float, workers: int, trust_belief: bool = True) -> float:
        """The most a host of `workers` workers admits over any `seconds` (see the module's docstring)."""
        owed = self.host_capacity if trust_belief and workers > 1 else self.slice
        return self.rate * seconds + self.host_capacity + workers * (self.slice + owed)


class Share:
    """A worker's part of one key's budget."""

    __slots__ = ("asked", "credit", "dry_until", "host_left", "key", "leased", "pending", "seen")

    def __init__(self, key: bytes, now: float, host_left: float = 0.0):
        self.key = key  # the host bucket's key in the store
        self.credit = 0  # tokens held; negative: requests admitted on debt
        self.dry_until = 0.0  # the host bucket was empty: refuse without credit until then
        self.pending = False  # a lease is asked for and not answered yet
        self.asked = now  # when the lease was asked for
        self.seen = now  # the last request
        self.host_left = host_left  # tokens the host bucket held after the last lease (or is believed to hold)
        self.leased = now  # when the last lease was answered

    def __repr__(self) -> str:
        return f"Share(credit={self.credit}, dry_until={self.dry_until}, pending={self.pending}, seen={self.seen})"


def admitter(budget: Budget, ask: Callable[[Share], None], trust_belief: bool = True) -> Callable[[Share, float], bool]:
    """`admit(share, now) -> bool` for `budget`: spend a token or a debt, or refuse; `ask(share)`
    when the share should be leased tokens (its `pending` is then True until `settle`)."""
    slice_ = budget.slice
    low = slice_ / 2
    rate = budget.rate
    top = budget.host_capacity if trust_belief else 0

    def admit(share: Share, now: float) -> bool:
        share.seen = now
        credit = share.credit
        if credit > 0:
            share.credit = credit - 1
            if credit - 1 < low and not share.pending and now >= share.dry_until:
                share.asked = now
                ask(share)
            return True
        if now >= share.dry_until:
            # on debt: up to a slice, or what the host bucket is believed to hold now
            if -credit < slice_ or 1 - credit <= min(top, share.host_left + (now - share.leased) * rate):
                share.credit = credit - 1
                admitted = True
            else:
                admitted = False
            if not share.pending:
                share.asked = now
                ask(share)
            return admitted
        return False

    return admit


def want(share: Share, budget: Budget, now: float) -> int:
    """The tokens to ask the host for: enough to repay the debt and hold a slice; or, for a share
    idle for IDLE_S, to settle to nothing (a negative number gives its credit back)."""
    if now - share.seen >= IDLE_S:
        return -share.credit
    return budget.slice - share.credit


def settle(share: Share, budget: Budget, asked: int, granted: int, left: float, now: float) -> None:
    """The host's answer at `now` to a lease of `asked` tokens: `granted` of them, `left` in its
    bucket after. Fewer than asked means the bucket is empty: the share is dry until its next token
    is due, counted from when the lease was asked for rather than answered, so that a request
    admitted on debt after that is leased for when its token is there."""
    share.pending = False
    share.credit += granted
    share.host_left = left
    share.leased = now
    if granted < asked:
        share.dry_until = share.asked + (1.0 - left) / budget.rate
