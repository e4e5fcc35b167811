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

from pyreqwest.exceptions import PyreqwestError

log = logging.getLogger("gatewayd.upstream")

_HEADERS = [("user-agent", "gatewayd-health-check")]


async def check(pool, url: str, timeout: float) -> bool:
    """Whether `url` answers 2xx or 3xx, body and all, within `timeout` seconds."""
    pool.acquire()
    try:
        async with asyncio.timeout(timeout):
            async with pool.client.request("GET", url).headers(_HEADERS).build_streamed() as response:
                while await response.body_reader.read_chunk() is not None:
                    pass
                return 200 <= response.status < 400
    except (TimeoutError, PyreqwestError):
        return False
    finally:
        pool.release()


async def run(upstream) -> None:
    """Check `upstream`'s targets every interval until cancelled."""
    spec = upstream.config.health
    rotation, pool = upstream.rotation, upstream.pool
    urls = [t.decode() + spec.path for t in upstream.targets]
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        try:
            results = await asyncio.gather(*(check(pool, url, spec.timeout) for url in urls))
            now = monotonic()
            for target, ok in zip(rotation.members, results):
                target.check(ok, now, rotation)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not end the checks
            log.exception("health checks of upstream %s failed", upstream.config.name)
        due = max(due + spec.interval, loop.time())
        await asyncio.sleep(due - loop.time())
