"""Serve TCP listeners with Hypercorn, for a pure-Python stack (`server.engine: hypercorn`).

Hypercorn speaks HTTP/1.1 and h2c on every listener; `server.http` applies to Granian only.
"""

from __future__ import annotations

import asyncio
import logging

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from ..config.model import Listen


async def serve(app, listeners: tuple[Listen, ...], http: str, stop: asyncio.Event) -> None:
    config = HypercornConfig()
    config.bind = [str(listen) for listen in listeners]
    config.accesslog = None
    config.errorlog = logging.getLogger("gatewayd.hypercorn")
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait, mode="asgi")
