"""Active health checks: the I/O edge of health.py.

One asyncio task per upstream with `health`, on the serving loop (started and stopped by the
UpstreamRegistry as configs come and go): every `interval` it sends `GET path` to each target at
once, through the upstream's pool, and reports pass or fail to the target, whose tables decide.
A check passes on a 2xx or 3xx answer received whole within `timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic

from .errors import UpstreamError
from .h1_connection import DONE, request_head

log = logging.getLogger("gatewayd.upstream")

_FIELDS = b"user-agent: gatewayd-health-check\r\n"


async def check(pool, ep, path: bytes, timeout: float) -> bool:
    """Whether `path` on the target `ep` answers 2xx or 3xx, body and all, within `timeout` seconds."""
    pool.acquire()
    conn = None
    try:
        async with asyncio.timeout(timeout):
            head = request_head(b"GET", path, ep.authority, _FIELDS)
            conn = await pool.h1.request(ep, head, False, None, False, timeout, True)
            while conn.state != DONE:
                await conn.more(timeout)
                conn.take()
            return 200 <= conn.status < 400
    except (TimeoutError, UpstreamError):
        return False
    finally:
        if conn is not None:
            pool.h1.put(conn)
        pool.release()


async def run(upstream) -> None:
    """Check `upstream`'s targets every interval until cancelled."""
    spec = upstream.config.health
    rotation, pool = upstream.rotation, upstream.pool
    path = spec.path.encode()
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        try:
            results = await asyncio.gather(*(check(pool, ep, path, spec.timeout) for ep in upstream.endpoints))
            now = monotonic()
            for target, ok in zip(rotation.members, results):
                target.check(ok, now, rotation)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not end the checks
            log.exception("health checks of upstream %s failed", upstream.config.name)
        due = max(due + spec.interval, loop.time())
        await asyncio.sleep(due - loop.time())
