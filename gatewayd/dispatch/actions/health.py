"""The health endpoint: the process's view of its config (generation, hash, last reload and its
error), and the state of policies that depend on something outside the config (a JWKS URL)."""

from __future__ import annotations

import json

from ...runtime.kept import health as kept_health

_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


def compile_health(status, kept):
    """`status` is the live `RuntimeStatus`, read at request time since reloads change it; `kept`
    the policy state this config holds (gatewayd.runtime.kept)."""

    async def health(ex) -> None:
        document = status.health()
        if policies := kept_health(kept):
            document["policies"] = dict(sorted(policies.items()))
        body = json.dumps(document).encode()
        await ex.respond(200, [*_HEADERS, (b"content-length", b"%d" % len(body))], body)

    return health
