"""The `cache` policy's wrapper around a route's action: answer from a tier, or fetch once and store.

GET and HEAD are looked up (a HEAD is answered from a stored GET, and a HEAD miss fetches the GET);
other methods go to the action, and an unsafe one that succeeds invalidates its URL and the
same-origin Location and Content-Location it answered with (RFC 9111 section 4.4). A stored
response the request may use is served with a computed Age; a client's conditional request is
answered 304 from it. Otherwise the origin is asked, conditionally when a stored response has a
validator, by one request per key at a time (flights.py). A fresh hit may start an early refresh
(XFetch: when `now - delta * beta * ln(rand) >= stale_at`), a stale one within
stale-while-revalidate a background refresh; either goes upstream once per host at a time (a lease
in the host store). Every answer carries `Cache-Status` (RFC 9211).
"""

from __future__ import annotations

import asyncio
import logging
from math import log
from random import random
from time import time
from urllib.parse import urlsplit

from ..dispatch.exchange import Cut
from . import admission
from .admission import Rules
from .capture import Capture
from .conditional import headers_304, not_modified, validates
from .freshness import FRESH, NO_RULES, REVALIDATE_LATER, STALE_OK, judge, may_serve_on_error
from .l2 import expires_in
from .request import View, selection, url_of

log_ = logging.getLogger("gatewayd.cache")

SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# request fields the origin must not see on a fetch the cache makes: the client's validators are
# the cache's to answer, and the cache sends its own
_CONDITIONALS = frozenset({b"if-none-match", b"if-modified-since", b"range", b"if-range"})
# reasons (admission.py) for which a URL's response cannot be shared, whoever asks: misses of it are
# not coalesced for PASS_FOR seconds (one request at a time would queue behind each other's fetch)
_NOT_SHAREABLE = frozenset({"no-store", "private", "set-cookie", "vary-star", "no-freshness", "status", "not-understood"})
PASS_FOR = 10.0
ELSEWHERE_POLL = 0.005  # seconds between looks into the shared tier for another worker's fetch


def _status(detail: str) -> bytes:
    return b"gatewayd; " + detail.encode()


HIT = _status("hit")
FWD_MISS = _status("fwd=uri-miss")
FWD_VARY = _status("fwd=vary-miss")
FWD_STALE = _status("fwd=stale")
FWD_REQUEST = _status("fwd=request")
FWD_METHOD = _status("fwd=method")
FWD_BYPASS = _status("fwd=bypass")


def compile_cached(action, tiers, ns: bytes, rules: Rules, beta: float | None, pick_query, key_fields, timeout: float, counter):
    """`action` wrapped by the cache. `ns`: the route's namespace (keys of another definition never
    meet this one's); `pick_query`: the query part of the key (None: the whole query);
    `key_fields`: request fields in the key; `counter(result)`: counts an answer by its kind."""
    l1 = tiers.l1
    flights = tiers.flights
    passes = tiers.passes

    def url_for(path: str, query: bytes) -> bytes:
        return url_of(path, query if pick_query is None else pick_query(query))

    async def cached(ex) -> None:
        scope = ex.scope
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return await _forward(ex, method)
        view = View(scope["headers"], key_fields)
        if view.ranged:
            counter("bypass")
            ex.add_headers(((b"cache-status", FWD_BYPASS + b"; detail=range"),))
            return await action(ex)
        url = url_for(scope["path"], scope["query_string"])
        key = b"%s\x00%s\x00%s" % (ns, view.host or b"", url)
        if view.fields:
            key += b"\x00" + b"\x00".join(view.fields.get(f, b"") for f in key_fields)
        consumer = ex.consumer
        foreign_auth = view.authorization and consumer is None
        now = time()
        entry = _lookup(key, scope["headers"], consumer, foreign_auth)
        if entry is None and tiers.shared:
            entry = await _shared_lookup(key, url, scope["headers"], consumer, foreign_auth)
        if entry is not None:
            verdict = judge(entry, view.rules, now)
            if verdict == FRESH:
                if beta is not None and now - entry.delta * beta * log(1.0 - random()) >= entry.stale_at:
                    _refresh(key, scope, entry, consumer, ex.request_id)
                counter("hit")
                return await _serve(ex, entry, view, now, b"%s; ttl=%d" % (HIT, entry.stale_at - now))
            if verdict == STALE_OK:
                counter("stale")
                return await _serve(ex, entry, view, now, b"%s; ttl=%d" % (HIT, entry.stale_at - now))
            if verdict == REVALIDATE_LATER:
                _refresh(key, scope, entry, consumer, ex.request_id)
                counter("stale")
                return await _serve(ex, entry, view, now, b"%s; ttl=%d; detail=stale-while-revalidate" % (HIT, entry.stale_at - now))
            if tiers.shared and view.rules is NO_RULES:  # another worker or gateway may have refreshed it
                newer = await _shared_lookup(key, url, scope["headers"], consumer, foreign_auth)
                if newer is not None and newer.stale_at > entry.stale_at and judge(newer, NO_RULES, now) == FRESH:
                    counter("hit")
                    return await _serve(ex, newer, view, now, b"%s; ttl=%d" % (HIT, newer.stale_at - now))
            if not view.rules.only_if_cached:
                return await _fetch(ex, key, url, view, entry, FWD_REQUEST if view.rules.no_cache else FWD_STALE)
        if view.rules.only_if_cached:  # RFC 9111 section 5.2.1.7: never the origin
            counter("miss")
            ex.add_headers(((b"cache-status", FWD_MISS + b"; detail=only-if-cached"),))
            return await ex.error(504, "not_cached", "only-if-cached: no stored response can answer this request")
        return await _fetch(ex, key, url, view, None, FWD_VARY if l1.node(key) is not None else FWD_MISS)

    def _lookup(key: bytes, headers, consumer, foreign_auth: bool):
        """A stored response from this worker's L1."""
        node = l1.node(key)
        if node is not None:
            selected = selection(headers, node.vary)
            variants = node.variants
            entry = (consumer is not None and variants.get((selected, consumer))) or variants.get((selected, None))
            if entry and (not foreign_auth or entry.auth_ok):
                return entry
        return None

    async def _shared_lookup(key: bytes, url: bytes, headers, consumer, foreign_auth: bool):
        """A stored response from the host's L2, else the cluster's tier (Redis), kept in this
        worker's L1 from then on."""
        candidates = _candidates(headers, consumer)
        found = tiers.l2.lookup(key, url, candidates) if tiers.l2 is not None else None
        if found is None and tiers.cluster is not None:
            found = await tiers.cluster.lookup(key, candidates)
        if found is None or (foreign_auth and not found[1].auth_ok):
            return None
        selected, entry = found
        l1.put(key, ns, entry, selected)
        return entry

    async def _serve(ex, entry, view: View, now: float, cache_status: bytes) -> None:
        age = int(entry.initial_age + (now - entry.response_time))
        if (view.if_none_match is not None or view.if_modified_since is not None) and not_modified(
            entry, view.if_none_match, view.if_modified_since
        ):
            headers = headers_304(entry)
            headers.append((b"age", b"%d" % age))
            headers.append((b"cache-status", cache_status))
            return await ex.respond(304, headers, b"", False)
        headers = list(entry.headers)
        headers.append((b"age", b"%d" % age))
        headers.append((b"cache-status", cache_status))
        await ex.start(entry.status, headers, False)
        body = b"" if ex.scope["method"] == "HEAD" else entry.body
        ex.sent = len(body)
        await ex.send({"type": "http.response.body", "body": body})

    async def _forward(ex, method: str) -> None:
        """A method the cache does not answer; an unsafe one that succeeds invalidates (section 4.4)."""
        counter("bypass")
        ex.add_headers(((b"cache-status", FWD_METHOD),))
        if method in SAFE:
            return await action(ex)
        seen = []
        send = ex.send

        async def spy(message):
            if message["type"] == "http.response.start":
                seen.append(message)
            await send(message)

        ex.send = spy
        try:
            await action(ex)
        finally:
            ex.send = send
        if seen and seen[0]["status"] < 400:
            scope = ex.scope
            urls = {url_for(scope["path"], scope["query_string"])}
            host = next((v for n, v in scope["headers"] if n == b"host"), b"").lower()
            scheme = scope.get("scheme", "http")
            for name, value in seen[0]["headers"]:
                if name.lower() in (b"location", b"content-location"):
                    same = _same_origin(value, scheme, host)
                    if same is not None:
                        urls.add(url_for(*same))
            for url in urls:
                await tiers.purge("url", url)

    def _upstream_scope(scope, stale):
        headers = [(n, v) for n, v in scope["headers"] if n not in _CONDITIONALS]
        if stale is not None:
            if stale.etag is not None:
                headers.append((b"if-none-match", stale.etag))
            if stale.last_modified is not None:
                headers.append((b"if-modified-since", stale.last_modified))
        return {**scope, "method": "GET", "headers": headers}

    async def _fetch(ex, key: bytes, url: bytes, view: View, stale, cache_status: bytes) -> None:
        """Ask the origin (once per key at a time) and answer `ex` with what it gives."""
        consumer = ex.consumer
        flight_key = key if consumer is None else key + b"\x00" + consumer.encode()
        foreign_auth = view.authorization and consumer is None
        running = flights.get(flight_key)
        lead = not foreign_auth and running is None
        if passes.get(key, 0.0) > time():
            lead = False  # its last response could not be shared: nobody waits on a fetch of it
        elif running is not None and view.rules is NO_RULES:
            try:
                entry = await asyncio.wait_for(asyncio.shield(running), timeout)
            except TimeoutError:
                counter("miss")
                ex.add_headers(((b"cache-status", cache_status + b"; collapsed"),))
                return await ex.error(504, "upstream_timeout", "the upstream did not answer in time")
            if entry is not None and entry.selected == selection(ex.scope["headers"], entry.vary) and (
                not foreign_auth or entry.auth_ok
            ):
                counter("collapsed")
                return await _serve(ex, entry, view, time(), cache_status + b"; collapsed")
        future = flights.lead(flight_key) if lead else None
        entry = None
        leased = False
        try:
            if future is not None and stale is None and tiers.shared and view.rules is NO_RULES:
                entry, leased = await _fetched_elsewhere(key, url, ex.scope["headers"], consumer, flight_key)
                if entry is not None:
                    counter("collapsed")
                    return await _serve(ex, entry, view, time(), cache_status + b"; collapsed")
            entry = await _origin(ex, ex.scope, consumer, ex.request_id, key, url, view, stale, cache_status)
        finally:
            if leased:
                tiers.release(b"fetch", flight_key, timeout)
            if future is not None:
                flights.land(flight_key, future, entry)

    async def _fetched_elsewhere(key: bytes, url: bytes, headers, consumer, flight_key: bytes):
        """(what another process stored, False) when one was fetching `key` (polled in the shared tier
        until it releases its lease, within the timeout); (None, True) when this one holds the lease
        and is to fetch it; (None, False) when the wait ran out."""
        deadline = time() + timeout
        waited = False
        while not await tiers.lease(b"fetch", flight_key, timeout):
            waited = True
            await asyncio.sleep(ELSEWHERE_POLL)
            entry = await _shared_lookup(key, url, headers, consumer, False)
            if entry is not None:
                return entry, False
            if time() > deadline:
                return None, False
        if waited:  # the lease came free, maybe because its holder has just stored the response
            entry = await _shared_lookup(key, url, headers, consumer, False)
            if entry is not None:
                tiers.release(b"fetch", flight_key, timeout)
                return entry, False
        return None, True

    async def _origin(client, scope, consumer, request_id, key, url, view, stale, cache_status):
        """One fetch from the origin for the request `scope`, answering `client` (None: a background
        refresh). The entry stored, or None."""
        request_time = time()
        foreign_auth = view.authorization and consumer is None
        kept = {}  # the entry admission made of the response

        def keep(status: int, headers) -> bool:
            if stale is not None:
                if status == 304:
                    return True
                if status >= 500 and may_serve_on_error(stale, time(), view.rules):
                    return True
            result = admission.admit(
                rules, view.rules, foreign_auth, status, headers,
                request_time=request_time, response_time=time(), consumer=consumer, url=url,
            )  # fmt: skip
            if isinstance(result, str):
                if result in _NOT_SHAREABLE:
                    passes[key] = time() + PASS_FOR
                return False
            kept["entry"] = result
            passes.pop(key, None)
            return True

        cap = Capture(_upstream_scope(scope, stale), client, keep, rules.max_object, cache_status, consumer, request_id)
        try:
            await action(cap)
        except Cut:  # the upstream's answer broke off: the action logged it
            if cap.passing and client is not None:
                raise  # the client's response had started: it is cut off too
            cap.failure = (502, "upstream_unavailable", "the upstream's answer broke off", ())
        if client is not None:
            cap.report_to(client)
        now = time()
        failed = cap.failure is not None or (stale is not None and cap.status is not None and cap.status >= 500 and not cap.passing)
        if failed:
            if stale is not None and may_serve_on_error(stale, now, view.rules):
                counter("stale")
                if client is not None:
                    await _serve(client, stale, view, now, b"%s; detail=stale-if-error" % HIT)
                return None
            if client is not None:
                counter("miss")
                if cap.failure is None:  # a 5xx kept for stale-if-error that could not be used
                    return await _hand_on(client, cap)
                if stale is not None and stale.must_revalidate:  # RFC 9111 section 5.2.2.2
                    client.add_headers(((b"cache-status", cache_status),))
                    return await client.error(504, "upstream_unavailable", "the stored response must be revalidated and the upstream could not be reached")
                await cap.send_failure()
            return None
        if cap.passing or not cap.done:
            counter("miss")
            return None
        if cap.status == 304 and stale is not None:
            if not validates(stale, cap.headers):  # RFC 9111 section 4.3.4: ask again, unconditionally
                return await _origin(client, scope, consumer, request_id, key, url, view, None, cache_status)
            entry, merged = _updated(stale, cap.headers, request_time, now, consumer, url)
            if isinstance(entry, str):  # the 304's fields forbid storing it: it answers this once, then is gone
                l1.remove(key)
                if client is not None:
                    counter("miss")
                    await _serve(client, merged, view, now, cache_status + b"; fwd-status=304")
                return None
            detail = b"; fwd-status=304"
        else:
            entry = kept.get("entry")
            entry = entry.replace(body=cap.body(), selected=selection(scope["headers"], entry.vary))
            detail = b"; fwd-status=%d" % cap.status
        selected = entry.selected
        l1.put(key, ns, entry, selected)
        if tiers.l2 is not None:
            tiers.l2.put(key, selected, entry, now)
        if tiers.cluster is not None:
            tiers.cluster.put(key, selected, entry, expires_in(entry, now))
        if client is not None:
            counter("miss")
            await _serve(client, entry, view, now, cache_status + detail + b"; stored")
        return entry

    def _updated(stale, headers_304, request_time, now, consumer, url):
        """The stored response with the fields of a 304 that validated it (RFC 9111 section 3.2): the
        entry to store (or why it may not be stored), and the response to answer with."""
        fresh = {n for n, _ in headers_304 if n != b"content-length"}
        merged = tuple((n, v) for n, v in stale.headers if n not in fresh) + tuple((n, v) for n, v in headers_304 if n in fresh)
        result = admission.admit(
            rules, NO_RULES, False, stale.status, merged, request_time=request_time, response_time=now,
            consumer=consumer if stale.consumer is not None else None, url=url,
        )  # fmt: skip
        if isinstance(result, str):
            return result, stale.replace(headers=merged, lifetime=0.0, response_time=now, initial_age=0.0)
        entry = result.replace(body=stale.body, selected=stale.selected)
        return entry, entry

    async def _hand_on(client, cap: Capture) -> None:
        headers = [*cap.headers, (b"cache-status", cap.cache_status)]
        await client.start(cap.status, headers, cap.dated)
        body = b"" if cap.head else cap.body()
        client.sent = len(body)
        await client.send({"type": "http.response.body", "body": body})

    def _refresh(key: bytes, scope, entry, consumer, request_id) -> None:
        """Refresh `entry` in the background, unless a refresh of it runs here or on another worker."""
        flight_key = key if consumer is None else key + b"\x00" + consumer.encode()
        if flight_key in flights:
            return
        future = flights.lead(flight_key)

        async def run():
            result = None
            try:
                if not await tiers.lease(b"refresh", flight_key, max(0.05, min(timeout, entry.lifetime / 2 or 1.0))):
                    return  # another worker (or gateway) refreshes it: its answer reaches the shared tiers
                view = View(scope["headers"], key_fields)
                result = await _origin(None, scope, consumer, request_id, key, entry.url, view, entry, FWD_STALE)
            except Exception:
                log_.exception("background refresh of %r failed", entry.url)
            finally:
                flights.land(flight_key, future, result)

        task = asyncio.get_running_loop().create_task(run())
        tiers.tasks.add(task)
        task.add_done_callback(tiers.tasks.discard)

    return cached


def _candidates(headers, consumer):
    """For the shared tier's lookup: the variants a request may use, given the fields a URL varies on."""

    def candidates(vary):
        selected = selection(headers, vary)
        return [(selected, consumer), (selected, None)] if consumer is not None else [(selected, None)]

    return candidates


def _same_origin(value: bytes, scheme: str, host: bytes) -> tuple[str, bytes] | None:
    """The path and query of a Location or Content-Location that names this origin (scheme, host
    and port: RFC 9111 section 4.4), else None."""
    try:
        parts = urlsplit(value.decode("latin-1"))
    except ValueError:
        return None
    if parts.scheme and parts.scheme.lower() != scheme:
        return None
    if parts.netloc and parts.netloc.lower().encode("latin-1") != host:
        return None
    if not parts.path.startswith("/"):
        return None
    return parts.path, parts.query.encode("latin-1")
