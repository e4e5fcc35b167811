"""The health endpoint: the process's view of its config (generation, hash, last reload and its
error), the state of policies that depend on something outside the config (a JWKS URL), and the
state of every upstream target (gatewayd/upstream/targets.py) as this process sees it."""

from __future__ import annotations

import json

from ...runtime.kept import health as kept_health

_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


def compile_health(status, kept, upstreams: dict | None = None):
    """`status` is the live `RuntimeStatus`, read at request time since reloads change it; `kept`
    the policy state this config holds (gatewayd.runtime.kept); `upstreams` its live upstreams."""
    rotations = sorted((name, u.rotation) for name, u in (upstreams or {}).items())

    async def health(ex) -> None:
        document = status.health()
        if policies := kept_health(kept):
            document["policies"] = dict(sorted(policies.items()))
        if rotations:
            document["upstreams"] = {name: rotation.health() for name, rotation in rotations}
        body = json.dumps(document).encode()
        await ex.respond(200, [*_HEADERS, (b"content-length", b"%d" % len(body))], body)

    return health
