"""The `api_key` policy: admit a request that presents a known key, as the consumer the key stands for.

Keys are looked up by their SHA-256: compiling builds digest -> outcome (the consumer id, or the
precomputed `403` for a consumer that `allow` does not list), so a presented key costs one hash and
one dict lookup. The raw keys are not kept once compiled and never compared with `==` (a lookup on
digests tells a timing attacker nothing about a key), and `sha256` entries keep the secret out of
the file altogether. Nothing derived from a key reaches a log, an error, a metric label or /health.
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote_to_bytes

from ..config.validate import did_you_mean
from .auth import Refusal, forbidden, refused
from .effects import MISSING, Effects

SCHEME = b"Bearer"
DEFAULT_FROM = ("header:Authorization", "header:X-API-Key")

def digest(key: str) -> bytes:
    """What a key is looked up by."""
    return hashlib.sha256(key.encode()).digest()


def _entry_digest(entry: dict) -> bytes:
    return digest(entry["key"]) if "key" in entry else bytes.fromhex(entry["sha256"])


def _sources(spec: dict) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """`from` as (header name -> rank, query parameter name -> rank), rank being the place in `from`."""
    headers, queries = {}, {}
    for rank, source in enumerate(spec.get("from", DEFAULT_FROM)):
        where, _, name = source.partition(":")
        if where == "header":
            headers[name.lower().encode("latin-1")] = rank
        else:
            queries[name.encode()] = rank
    return headers, queries


def bearer(value: bytes) -> bytes | None:
    """The credential of an `Authorization: Bearer <credential>` value (the scheme in any case), else None."""
    if value[:7].lower() == b"bearer ":
        return value[7:].strip() or None
    return None


def query_key(query: bytes, ranks: dict[bytes, int], best: int) -> tuple[bytes | None, int]:
    """The key of the best-ranked query parameter of `ranks` ranked before `best`, percent-decoded, and its rank."""
    found = None
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if b"%" in name:
            name = unquote_to_bytes(name)
        rank = ranks.get(name)
        if rank is not None and rank < best and value:
            found, best = (unquote_to_bytes(value) if b"%" in value else value), rank
    return found, best


def compile_policy(spec: dict, ctx=None, name: str = "") -> Effects:
    allow = spec.get("allow")
    unknown = Refusal(refused(SCHEME, "the API key is not valid"), name, "unknown_key")
    outcomes: dict[bytes, object] = {}  # key digest -> consumer id, or its 403
    denied: dict[str, Refusal] = {}
    for entry in spec["keys"]:
        consumer = entry["id"]
        if allow is not None and consumer not in allow:
            if consumer not in denied:
                denied[consumer] = Refusal(forbidden(consumer), name, "forbidden")
            outcome = denied[consumer]
        else:
            outcome = consumer
        outcomes.setdefault(_entry_digest(entry), outcome)  # `check` refuses duplicates; the first wins
    header_ranks, query_ranks = _sources(spec)
    first_query = min(query_ranks.values(), default=None)
    rank_of = header_ranks.get
    lookup = outcomes.get
    sha256 = hashlib.sha256

    def authenticate(ex, now):
        """The key of the best-ranked source that has one (the first header of a name; `Authorization`
        only as `Bearer <key>`; an empty value is no key) -> its consumer, its 403, or 401."""
        scope = ex.scope
        found = None
        best = len(header_ranks) + len(query_ranks)
        for header, value in scope["headers"]:
            rank = rank_of(header)
            if rank is not None and rank < best:
                if header == b"authorization":
                    value = bearer(value)
                if value:
                    found, best = value, rank
        if first_query is not None and best > first_query and scope["query_string"]:
            in_query, best = query_key(scope["query_string"], query_ranks, best)
            found = in_query or found
        if found is None:
            return MISSING
        return lookup(sha256(found).digest()) or unknown

    return Effects(authenticators=((authenticate, SCHEME),))


def problems(spec: dict, ctx=None) -> list[tuple[tuple, str]]:
    """A key that stands for two consumers (or is listed twice), and `allow` entries that are no
    key's id. Messages name entries by index and id, never by key."""
    found = []
    seen: dict[bytes, int] = {}
    keys = spec.get("keys", ())
    for i, entry in enumerate(keys):
        field = "key" if "key" in entry else "sha256"
        d = _entry_digest(entry)
        first = seen.setdefault(d, i)
        if first != i:
            other = keys[first]["id"]
            what = "is listed twice" if other == entry["id"] else f"also stands for {other!r}"
            found.append((("keys", i, field), f"this key {what} (keys[{first}]): a key must identify one consumer"))
    ids = {entry["id"] for entry in keys}
    for i, consumer in enumerate(spec.get("allow", ())):
        if consumer not in ids:
            hint = did_you_mean(consumer, ids) or f"; ids: {', '.join(sorted(ids))}"
            found.append((("allow", i), f"{consumer!r} is not the id of any of this policy's keys{hint}"))
    return found
