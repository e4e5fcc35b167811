"""`gatewayd serve`: load the config, start the engine on its listeners, reload on change, stop on signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from ..config.errors import ConfigError
from ..config.model import Listen
from ..runtime.gateway import Gateway
from ..runtime.watch import reload_on_sighup, watch_file
from .app import GatewayApp

log = logging.getLogger("gatewayd")


def _engine(name: str):
    if name == "hypercorn":
        from . import hypercorn_engine as engine
    else:
        from . import granian_engine as engine
    return engine


def serve(path: str, listen: list[str]) -> int:
    gateway = Gateway(path)
    try:
        config = gateway.start()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    listeners = tuple(Listen.parse(s) for s in listen) or config.server.listen
    log.info(
        "gatewayd serving %s on %s with %s (generation %d, %d routes)",
        path,
        ", ".join(f"http://{l}" for l in listeners),
        config.server.engine,
        gateway.status.generation,
        len(config.routes),
    )
    uvloop.run(_serve(gateway, listeners, config.server.engine, config.server.http))
    return 0


async def _serve(gateway: Gateway, listeners, engine: str, http: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload_on_sighup(gateway)
    watcher = asyncio.create_task(watch_file(gateway, stop))
    try:
        await _engine(engine).serve(GatewayApp(gateway), listeners, http, stop)
    finally:
        stop.set()
        await watcher
        await gateway.close()
        log.info("gatewayd stopped")
