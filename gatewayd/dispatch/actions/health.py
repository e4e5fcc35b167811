"""The health endpoint: the process's view of its config (generation, hash, last reload and its error)."""

from __future__ import annotations

import json

_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


def compile_health(status):
    """`status` is the live `RuntimeStatus`; read at request time, since reloads change it."""

    async def health(ex) -> None:
        body = json.dumps(status.health()).encode()
        await ex.respond(200, [*_HEADERS, (b"content-length", b"%d" % len(body))], body)

    return health
