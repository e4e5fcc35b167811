"""Load-balancing decisions over an upstream's targets: pure state machines, no I/O.

`pick()` returns a target index, every target taken as in rotation at full weight (the request
path's fast case); `pick_among(weights)` picks among the targets whose weight is above 0, in
proportion to their weights (a target out of rotation has 0, one in slow start a fraction);
`done(i)` reports that a request to target i finished, whichever way it was picked.
"""

from __future__ import annotations


class RoundRobin:
    __slots__ = ("n", "next", "current")

    def __init__(self, n: int):
        self.n = n
        self.next = 0
        self.current = [0.0] * n  # smooth weighted round robin's running scores (pick_among)

    def pick(self) -> int:
        i = self.next
        self.next = (i + 1) % self.n
        return i

    def pick_among(self, weights: list[float]) -> int:
        """Smooth weighted round robin (nginx's): each candidate's score grows by its weight, the
        highest is picked and loses the total, so picks interleave in proportion to the weights."""
        current = self.current
        best, total = -1, 0.0
        for i, w in enumerate(weights):
            if w > 0:
                current[i] += w
                total += w
                if best < 0 or current[i] > current[best]:
                    best = i
        current[best] -= total
        return best

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

    def pick_among(self, weights: list[float]) -> int:
        """The candidate with the fewest requests in flight for its weight (its load once this
        request is added, divided by its weight); ties go round-robin."""
        flights = self.in_flight
        n = self.n
        start = self.start
        best, best_load = -1, 0.0
        for k in range(n):
            i = (start + k) % n
            w = weights[i]
            if w > 0:
                load = (flights[i] + 1) / w
                if best < 0 or load < best_load:
                    best, best_load = i, load
        self.start = (start + 1) % n
        flights[best] += 1
        return best

    def done(self, i: int) -> None:
        self.in_flight[i] -= 1


BALANCERS = {"round_robin": RoundRobin, "least_requests": LeastRequests}
