"""The `rate_limit` policy: at most `limit` requests per `per` for each value of `key`, plus a burst,
for the whole host whatever `server.workers` is.

Each key has a token bucket of `max(burst, 1)` tokens, full at first, gaining `limit` per `per`; a
request spends one (`bucket.py` says why a token bucket, and how a worker decides). The host's
buckets live in its store and no request waits for it: each worker spends tokens it leased earlier,
in slices of ~10 ms of the rate (S = max(1, ceil(limit / per × 10 ms)) tokens), or admits on a
bounded debt while a lease is in flight; a background task per process (`lease.py`) leases for all
the keys that ran low at once, in one store operation. So the limit holds for the host whatever
`server.workers` is. Over any T seconds one worker admits at most limit×T/per + max(burst, 1) + 3S -
1; W workers at most limit×T/per + B + W×(B + S), with B = max(burst, 1) + S - 1, the extra bucket-
fulls only for a burst sprayed over several workers within a millisecond, and owed; a steady
overload admits limit×T/per + max(burst, 1) give or take a few slices (measured: `bench/ratelimit.py`).
With a `cluster` section the buckets are in Redis and every worker of every gateway leases from
them (`gatewayd/cluster/buckets.py`): the same step, the same bound with W the workers of all the
gateways; `on_error` says what a limit does while Redis does not answer.

Over the limit: `429` with the JSON error `rate_limited`, `Retry-After` (whole seconds, rounded
up, until the worker may admit again). Every answer carries the fields of the IETF draft "RateLimit
header fields for HTTP" (draft-ietf-httpapi-ratelimit-headers-11, sections 3 and 4): the constant
`RateLimit-Policy: "<policy>";q=<limit>;w=<per in seconds>` (a `per` that is not a whole number of
seconds is given as the whole seconds above it and the quota they allow), and `RateLimit:
"<policy>";r=<remaining>;t=<seconds>`, where r is what this worker holds plus what the host bucket
held at its last lease (an estimate, which the draft allows), and t the seconds until the next
token is due (until Retry-After on a 429). Both are precomputed: per request, the step looks up its
share, decides, and adds one tuple of two prebuilt headers.

Keys: `client_ip` (`client_ip.py`: the peer, or X-Forwarded-For from `server.trusted_proxies`),
`consumer` (set by the route's auth policy), `route` (the route's name), `header:Name` (a missing
header counts as one value), or a list of these (counted together). A worker keeps a bounded
table of shares per policy (`MAX_KEYS`): shares idle for `bucket.IDLE_S` are settled and dropped
as new keys come; beyond the bound the oldest is dropped whatever it owes. In the store, a key is
`ratelimit/<policy>/<digest of its spec>/<digest of the value>`, the same in every worker, so the
workers share budgets; the kept `Limiter` (the same object while the policy's definition does not
change) keeps a worker's shares across reloads, so a reload hands out no fresh budget.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict

from ..config.units import seconds
from ..observe import metrics
from .bucket import IDLE_S, Budget, Share, admitter
from .client_ip import client_ip
from .effects import RATE_LIMIT, Effects, Reject
from .lease import LEASER

REJECTED = metrics.counter(
    "gatewayd_ratelimit_rejected_total", "Requests refused with 429 by a rate limit, by policy.", ("policy",)
)
# shares one worker keeps per policy; beyond, the oldest is dropped
MAX_KEYS = 65_536
# shares looked at (dropped if idle and settled, else moved to the back) each time a new key comes
TIDY_STEPS = 2
# `RateLimit: r=` values prebuilt per policy; a larger remainder is shown as this (the draft lets servers show less)
MAX_SHOWN = 4096
# 429 answers prebuilt per policy, one per Retry-After value
MAX_REFUSALS = 256
# header values longer than this (bytes) are told apart by their digest
LONG_VALUE = 64


def problems(spec: dict, ctx) -> list[tuple[tuple, str]]:
    """A `per` of zero (the schema allows `0s`)."""
    try:
        zero = seconds(spec["per"]) <= 0
    except (KeyError, TypeError, ValueError):  # the schema reports it
        return []
    return [(("per",), "per must be more than 0s")] if zero else []


def compile_policy(spec: dict, ctx, name: str) -> Effects:
    cluster = ctx.cluster
    if cluster is None:
        limiter = ctx.keep(name, "rate_limit", spec, lambda: Limiter(name, spec, ctx.store))
    else:  # leased from Redis; kept while its definition and its `on_error` (maybe the cluster's) are unchanged
        on_error = spec.get("on_error", ctx.on_error)
        limiter = ctx.keep(name, "rate_limit", {**spec, "on_error": on_error}, lambda: Limiter(
            name, spec, ctx.store, leaser=cluster.leaser, on_error=on_error, link=cluster.link, cold_full=False
        ))  # fmt: skip
    key_of = key_function(spec.get("key", "client_ip"), ctx.trusted_proxies)
    return Effects(steps=((RATE_LIMIT, rate_limit_step(limiter, key_of, REJECTED.labels(name))),))


def rate_limit_step(limiter: Limiter, key_of, rejected):
    """The request step: one dict lookup for the key's share, one decision, prebuilt headers."""
    shares = limiter.shares
    admit = limiter.admit
    cold = limiter.cold
    shown = limiter.admitted
    top = len(shown) - 1
    refuse = limiter.refuse

    def step(ex, now):
        value = key_of(ex)
        share = shares.get(value)
        if share is None:
            share = cold(value, now)
        if admit(share, now):
            r = share.credit + int(share.host_left)
            ex.add_headers(shown[r] if 0 <= r <= top else shown[0 if r < 0 else top])
            return None
        answer = refuse(share, now)
        if answer.status == 429:
            rejected.inc()
        return answer

    return step


def key_function(key, trusted_proxies: tuple):
    """`key_of(ex)` for the `key` setting: a str, bytes or None for one key, a tuple for a list."""
    if isinstance(key, list):
        if len(key) == 1:
            return key_function(key[0], trusted_proxies)
        parts = tuple(key_function(k, trusted_proxies) for k in key)
        if len(parts) == 2:
            first, second = parts
            return lambda ex: (first(ex), second(ex))
        return lambda ex: tuple([part(ex) for part in parts])
    if key == "client_ip":
        return client_ip(trusted_proxies)
    if key == "consumer":
        return lambda ex: ex.consumer
    if key == "route":
        return lambda ex: ex.route_name
    return header_value(key.partition(":")[2].lower().encode("latin-1"))


def header_value(name: bytes):
    """`value_of(ex)`: the request's `name` header (several joined by commas), None when missing; a
    value longer than LONG_VALUE is told apart by its digest (a str: never equal to a value, which
    is bytes), so that a worker's table of keys stays small."""

    def value_of(ex):
        found = None
        for header, value in ex.scope["headers"]:
            if header == name:
                found = value if found is None else found + b"," + value
        if found is not None and len(found) > LONG_VALUE:
            return hashlib.blake2b(found, digest_size=16).hexdigest()
        return found

    return value_of


def spec_digest(spec: dict) -> str:
    """What names a policy's buckets in the store: its budget and key (not `on_error`, which changes
    what happens without the store)."""
    budget = {k: v for k, v in spec.items() if k != "on_error"}
    return hashlib.sha256(json.dumps(budget, sort_keys=True).encode()).hexdigest()[:12]


def fail_closed(admit, link):
    """`admit` for a limit that fails closed: while `link` (Redis) is down, a share admits only
    from the tokens it holds, and owes nothing."""

    def admit_closed(share: Share, now: float) -> bool:
        if share.credit <= 0 and not link.up:
            share.seen = now
            return False
        return admit(share, now)

    return admit_closed


class Limiter:
    """One rate-limit policy's state in a worker, kept across reloads while its definition is unchanged."""

    def __init__(
        self, name: str, spec: dict, store, leaser=LEASER, max_keys: int = MAX_KEYS, trust_belief: bool = True,
        on_error: str = "fail_open", link=None, cold_full: bool = True,
    ):  # fmt: skip
        """`store`: the host store (where a cluster's limit fails open to); `leaser`: the host's, or
        a cluster's (gatewayd/cluster/buckets.py), which asks Redis through `link`. `cold_full`: a
        share of a key new to this worker believes the bucket full until its first lease says what
        it holds; in a cluster it believes it empty (a slice of debt at most), since the first
        requests of a new key (an attacker's, say) reach every gateway at once."""
        per = seconds(spec["per"])
        self.name = name
        self.budget = budget = Budget.of(spec["limit"], per, spec.get("burst", 0))
        self.store = store
        self.leaser = leaser
        self.max_keys = max_keys
        self.prefix = f"ratelimit/{name}/{spec_digest(spec)}/".encode()
        self.shares: OrderedDict[object, Share] = OrderedDict()  # oldest first: O(1) at both ends
        self.closed = False
        self.admit = admitter(budget, self._ask, trust_belief)
        self.on_error = on_error
        self.cold_left = budget.capacity if cold_full else 0.0  # what a new share believes the bucket holds
        self.closed_on = link if on_error == "fail_closed" else None  # its 503s while Redis is down
        if self.closed_on is not None:
            self.admit = fail_closed(self.admit, link)
            self.unavailable = Reject(
                503, "rate_limit_unavailable",
                f"rate limit {name!r} cannot decide: the store it shares with other gateways does not answer",
                ((b"retry-after", b"1"),),
            )  # fmt: skip
        quoted = f'"{name}"'.encode()
        window = max(1, math.ceil(per - 1e-9))
        quota = spec["limit"] if window == per else math.floor(spec["limit"] * window / per + 1e-9)
        self.policy_header = (b"ratelimit-policy", b"%s;q=%d;w=%d" % (quoted, quota, window))
        self.token_s = max(1, math.ceil(1 / budget.rate - 1e-9))  # seconds until the next token is due, at most
        self.admitted = tuple(
            (self.policy_header, (b"ratelimit", b"%s;r=%d;t=%d" % (quoted, r, self.token_s)))
            for r in range(min(budget.capacity, MAX_SHOWN) + 1)
        )  # fmt: skip
        self._quoted = quoted
        self._limit = spec["limit"]
        self._per = spec["per"]
        self._refusals: dict[int, Reject] = {}

    def _ask(self, share: Share) -> None:
        self.leaser.ask(share, self)

    def host_key(self, value) -> bytes:
        """The store key of `value`'s bucket: the same in every worker; the value itself is not in it."""
        return (
            self.prefix
            + hashlib.blake2b(repr(value).encode("utf-8", "backslashreplace"), digest_size=16).hexdigest().encode()
        )

    def cold(self, value, now: float) -> Share:
        """A new share for a key this worker does not hold (the request path, once per key)."""
        shares = self.shares
        if shares:
            self.tidy(now)
            while len(shares) >= self.max_keys:
                shares.popitem(last=False)
        share = shares[value] = Share(self.host_key(value), now, self.cold_left)
        return share

    def tidy(self, now: float, steps: int = TIDY_STEPS) -> None:
        """Look at the oldest shares: drop one idle and settled, settle one idle with credit or debt
        (through a lease), move any other to the back."""
        shares = self.shares
        for _ in range(min(steps, len(shares))):
            value = next(iter(shares))
            share = shares[value]
            if now - share.seen >= IDLE_S and not share.pending:
                if share.credit == 0:
                    del shares[value]
                    continue
                if now >= share.dry_until:
                    share.asked = now
                    self._ask(share)
            shares.move_to_end(value)

    def refuse(self, share: Share, now: float) -> Reject:
        if self.closed_on is not None and not self.closed_on.up and share.credit <= 0:
            return self.unavailable
        wait = share.dry_until - now
        after = max(1, math.ceil(wait - 1e-9)) if wait > 0 else self.token_s
        refusal = self._refusals.get(after)
        if refusal is None:
            headers = (
                (b"retry-after", b"%d" % after),
                self.policy_header,
                (b"ratelimit", b"%s;r=0;t=%d" % (self._quoted, after)),
            )
            message = f"rate limit {self.name!r} admits {self._limit} requests per {self._per}; retry in {after} s"
            refusal = Reject(429, "rate_limited", message, headers)
            if len(self._refusals) < MAX_REFUSALS:
                self._refusals[after] = refusal
        return refusal

    def start(self) -> None:
        self.leaser.attach(self)

    def close(self) -> None:
        self.closed = True
        self.leaser.detach(self)
