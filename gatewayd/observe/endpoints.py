"""The `/latency` and `/metrics` actions, compiled like `dispatch/actions/health.py`.

Both answer for the whole host, whichever worker gets the request: the worker first folds and
publishes its own figures, then merges every live worker's from the host store. With
`observability.endpoints_access: local`, a client not on a loopback address gets the same 404 as
for a path no route matches.
"""

from __future__ import annotations

import json

from ..cluster.link import Unavailable
from ..dispatch.exchange import JSON_TYPE
from . import latency, metrics
from .latency_page import PAGE
from .observer import LATENCY_PREFIX, METRICS_PREFIX

_NO_STORE = (b"cache-control", b"no-store")
_HTML = (b"content-type", b"text/html; charset=utf-8")
_PROM = (b"content-type", metrics.CONTENT_TYPE.encode())


def is_loopback(client) -> bool:
    if not client:
        return False
    host = client[0]
    return host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.") or host == "localhost"


def _guard(action, local_only: bool):
    if not local_only:
        return action

    async def guarded(ex) -> None:
        if not is_loopback(ex.scope.get("client")):
            ex.route_name = ""  # recorded like any request no route took
            return await ex.not_found()
        await action(ex)

    return guarded


def wants_html(headers) -> bool:
    for name, value in headers:
        if name == b"accept":
            return b"text/html" in value
    return False


def latency_document(observer) -> dict:
    observer.refresh()
    docs = observer.workers(LATENCY_PREFIX)
    merged = latency.merge([d.get("latency") or {} for d in docs])
    return {**latency.report(merged, workers=len(docs)), "recording": observer.recording}


def compile_latency(observer, local_only: bool, cluster=None):
    """`cluster`: the `gatewayd.cluster.sketches.Sketches` of a gateway that shares them, which
    answer `?scope=cluster` (503 while Redis does not answer)."""
    page = PAGE.encode()

    async def latency_action(ex) -> None:
        query = ex.scope.get("query_string", b"")
        if wants_html(ex.scope["headers"]) and b"format=json" not in query:
            return await ex.respond(200, [_HTML, _NO_STORE, (b"content-length", b"%d" % len(page))], page)
        if b"scope=cluster" in query:
            if cluster is None:
                return await ex.error(404, "not_in_a_cluster", "this gateway shares no state with others (no `cluster` section)")
            try:
                document = await cluster.document()
            except Unavailable:
                return await ex.error(503, "cluster_unavailable", "redis, where the gateways publish their figures, does not answer")
        else:
            document = latency_document(observer)
        body = json.dumps(document, separators=(",", ":")).encode()
        await ex.respond(200, [JSON_TYPE, _NO_STORE, (b"content-length", b"%d" % len(body))], body)

    return _guard(latency_action, local_only)


def metrics_text(observer) -> bytes:
    observer.refresh()
    workers = observer.workers(METRICS_PREFIX)
    books = {(d.get("worker"), d.get("pid")): d.get("latency") for d in observer.workers(LATENCY_PREFIX)}
    rows = [{**w, "worker": str(w.get("worker")), "latency": books.get((w.get("worker"), w.get("pid")))} for w in workers]
    restarts = observer.store.get(metrics.RESTARTS_KEY)
    return metrics.render(rows, int(restarts or b"0"))


def compile_metrics(observer, local_only: bool):
    async def metrics_action(ex) -> None:
        body = metrics_text(observer)
        await ex.respond(200, [_PROM, _NO_STORE, (b"content-length", b"%d" % len(body))], body)

    return _guard(metrics_action, local_only)
