"""Which eviction the cache's L1 uses: a frequency-aware policy (SIEVE) against LRU, by hit ratio
and cost per lookup, on synthetic request streams of an API's GETs.

    python3 bench/cache_eviction.py [--requests 200000] [--keys 20000]

Streams: Zipf-distributed keys (skew 0.8 and 1.0: a few hot keys, a long tail), and the same with
a one-off scan mixed in (a crawler walking every key once), at cache sizes of 1%, 5% and 20% of the
keys, equal-sized entries. SIEVE (Zhang et al., NSDI 2024: one "visited" bit per entry, a hand that
evicts the first unvisited entry from the oldest end) is gatewayd's L1 itself (gatewayd/cache/l1.py);
LRU is written here for the comparison only. Prints a table of hit ratios and ns per lookup (a miss
includes storing the entry).
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import numpy as np

from gatewayd.cache.admission import Rules, admit
from gatewayd.cache.freshness import NO_RULES
from gatewayd.cache.l1 import L1


class LRU:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: OrderedDict[int, None] = OrderedDict()

    def lookup(self, key: int) -> bool:
        if key in self.keys:
            self.keys.move_to_end(key)
            return True
        if len(self.keys) >= self.capacity:
            self.keys.popitem(last=False)
        self.keys[key] = None
        return False


def l1_runner(capacity_entries: int, entry):
    l1 = L1(max_bytes=capacity_entries * entry.size)

    def lookup(key: int) -> bool:
        k = b"%d" % key
        if l1.node(k) is not None:
            return True
        l1.put(k, b"ns", entry, ())
        return False

    return lookup


def stream(rng, keys: int, n: int, skew: float, scan: bool) -> np.ndarray:
    ranks = np.arange(1, keys + 1, dtype=float)
    p = ranks**-skew
    p /= p.sum()
    s = rng.choice(keys, size=n, p=p)
    if scan:  # a crawler walks every key once, a third of the way in
        third = n // 3
        s = np.concatenate([s[:third], rng.permutation(keys), s[third:]])
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=20_000)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    entry = admit(Rules(), NO_RULES, False, 200, [(b"cache-control", b"max-age=60")], request_time=0.0,
                  response_time=0.0, consumer=None, url=b"/x").replace(body=b"x" * 1024)  # fmt: skip
    print("| stream | cache size | SIEVE (L1) hit ratio | LRU hit ratio | SIEVE (L1) ns/lookup | LRU ns/lookup |")
    print("|---|--:|--:|--:|--:|--:|")
    for skew in (0.8, 1.0):
        for scan in (False, True):
            keys = stream(rng, args.keys, args.requests, skew, scan).tolist()
            for share in (0.01, 0.05, 0.2):
                capacity = int(args.keys * share)
                row = []
                for lookup in (l1_runner(capacity, entry), LRU(capacity).lookup):
                    t = time.perf_counter_ns()
                    hits = sum(map(lookup, keys))
                    row.append((hits / len(keys), (time.perf_counter_ns() - t) / len(keys)))
                name = f"Zipf {skew}" + (" + scan" if scan else "")
                print(f"| {name} | {share:.0%} | {row[0][0]:.3f} | {row[1][0]:.3f} | {row[0][1]:.0f} | {row[1][1]:.0f} |")


if __name__ == "__main__":
    main()
