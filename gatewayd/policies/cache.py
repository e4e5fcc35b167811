"""The `cache` policy: a route's action wrapped by the response cache (gatewayd/cache).

Each route with the policy gets a namespace: a hash of everything that decides what its action
answers (the route's name and action, its upstream's definition, the rewrite, the header edits)
and of the policy's spec. A reload that leaves all of that alone keeps the namespace, so what is
stored stays hit (no stampede after a reload); a changed one starts empty, and the entries of the
old one are dropped from the worker's L1 when the old config is retired (the shared tier's expire).
"""

from __future__ import annotations

import hashlib
import json

from ..cache.admin import AdminListener
from ..cache.admission import Rules
from ..cache.l2 import L2
from ..cache.request import compile_query
from ..cache.serve import compile_cached
from ..cache.tiers import Tiers
from ..config import units
from ..observe import metrics
from .effects import Effects

RESULTS = ("hit", "stale", "miss", "collapsed", "bypass")
ANSWERS = metrics.counter(
    "gatewayd_cache_requests_total",
    "Requests a cache policy answered, by policy and result (hit, stale, miss, collapsed: a miss that "
    "waited on another request's fetch, bypass: a method or request the cache does not answer).",
    ("policy", "result"),
)


def problems(spec: dict, ctx) -> list[tuple[tuple, str]]:
    if spec.get("mode") == "ttl" and "ttl" not in spec:
        return [((), "mode: ttl needs `ttl`: how long 2xx responses are fresh")]
    return []


class _Namespace:
    """A namespace kept across reloads; retiring it drops its entries from this worker's L1."""

    def __init__(self, tiers, ns: bytes):
        self.tiers, self.ns = tiers, ns

    def close(self) -> None:
        ns = self.ns
        self.tiers.l1.drop(lambda node, entry: node.ns != ns)


def tiers(ctx) -> Tiers:
    """The worker's cache tiers: made with the first config that caches, then kept across reloads."""
    config = ctx.cache

    def make() -> Tiers:
        l2 = L2.open(ctx.state_dir, config.l2_max) if ctx.state_dir is not None else None
        return Tiers(config.l1_max, l2, ctx.store)

    found = ctx.kept.get(("cache", "tiers"), make)
    found.l1.resize(config.l1_max)
    found.cluster = ctx.cluster.cache if ctx.cluster is not None else None
    if config.admin is not None:
        admin = config.admin
        ctx.kept.get(("cache", "admin", str(admin.listen), admin.key), lambda: AdminListener(admin.listen, admin.key, found))
    return found


def compile_policy(spec: dict, ctx, name: str) -> Effects:
    cache = ctx.cache
    worker_tiers = tiers(ctx)
    rules = Rules(
        mode=spec.get("mode", "standard"),
        ttl=units.seconds(spec["ttl"]) if "ttl" in spec else None,
        swr=units.seconds(spec.get("stale_while_revalidate", "0s")),
        sie=units.seconds(spec.get("stale_if_error", "0s")),
        max_object=cache.max_object,
        tag_header=cache.tag_header.encode(),
    )
    beta = spec["early_refresh"]["beta"] if "early_refresh" in spec else None
    key = spec.get("key", {})
    pick_query = compile_query(key.get("query"))
    key_fields = tuple(h.lower().encode() for h in key.get("headers", ()))
    children = {result: ANSWERS.labels(name, result) for result in RESULTS}

    def count(result: str) -> None:
        children[result].inc()

    def wrap(action, route):
        definition = json.dumps([route.fingerprint, spec], sort_keys=True, default=str).encode()
        ns = hashlib.blake2b(definition, digest_size=8).hexdigest().encode()
        ctx.kept.get(("cache", ns), lambda: _Namespace(worker_tiers, ns))
        return compile_cached(action, worker_tiers, ns, rules, beta, pick_query, key_fields, route.timeout, count)

    return Effects(wraps=(wrap,))
