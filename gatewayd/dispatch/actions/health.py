"""The health endpoint: the process's view of its config (generation, hash, last reload and its
error), the state of policies that depend on something outside the config (a JWKS URL), and the
state of every upstream target (gatewayd/upstream/targets.py) as this process sees it.

Its status is `ok` (200), or `starting` (503) while a worker's host has workers that do not serve
yet (server/supervisor.py). `?ready` asks only that, for load balancers: a fixed answer, no
document to build.
"""

from __future__ import annotations

import json

from ...runtime.kept import health as kept_health

_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))
_READY, _STARTING = b'{"status": "ok"}', b'{"status": "starting"}'
_READY_HEADERS = [*_HEADERS, (b"content-length", b"%d" % len(_READY))]
_STARTING_HEADERS = [*_HEADERS, (b"content-length", b"%d" % len(_STARTING))]


def compile_health(status, kept, upstreams: dict | None = None):
    """`status` is the live `RuntimeStatus`, read at request time since reloads change it; `kept`
    the policy state this config holds (gatewayd.runtime.kept); `upstreams` its live upstreams."""
    rotations = sorted((name, u.rotation) for name, u in (upstreams or {}).items())

    async def health(ex) -> None:
        if ex.scope["query_string"] == b"ready":
            if status.ready:
                return await ex.respond(200, list(_READY_HEADERS), _READY)
            return await ex.respond(503, list(_STARTING_HEADERS), _STARTING)
        document = status.health()
        if policies := kept_health(kept):
            document["policies"] = dict(sorted(policies.items()))
        if rotations:
            document["upstreams"] = {name: rotation.health() for name, rotation in rotations}
        body = json.dumps(document).encode()
        await ex.respond(200 if status.ready else 503, [*_HEADERS, (b"content-length", b"%d" % len(body))], body)

    return health
