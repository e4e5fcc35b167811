"""Load-balancing decisions over an upstream's targets: pure state machines, no I/O.

`pick()` returns a target index and `done(i)` reports that a request to target i finished.
"""

from __future__ import annotations


class RoundRobin:
    __slots__ = ("n", "next")

    def __init__(self, n: int):
        self.n = n
        self.next = 0

    def pick(self) -> int:
        i = self.next
        self.next = (i + 1) % self.n
        return i

    def done(self, i: int) -> None:
        pass


class LeastRequests:
    """The target with the fewest requests in flight; ties go round-robin so idle targets share load."""

    __slots__ = ("n", "in_flight", "start")

    def __init__(self, n: int):
        self.n = n
        self.in_flight = [0] * n
        self.start = 0

    def pick(self) -> int:
        flights = self.in_flight
        n = self.n
        start = self.start
        best = start
        for k in range(1, n):
            i = (start + k) % n
            if flights[i] < flights[best]:
                best = i
        self.start = (start + 1) % n
        flights[best] += 1
        return best

    def done(self, i: int) -> None:
        self.in_flight[i] -= 1


BALANCERS = {"round_robin": RoundRobin, "least_requests": LeastRequests}
