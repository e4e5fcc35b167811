"""The ASGI application both engines run: hands each HTTP request to the current compiled table.

The table reference is replaced whole on reload; a request keeps the table it started with.
"""

from __future__ import annotations


class GatewayApp:
    __slots__ = ("gateway",)

    def __init__(self, gateway):
        self.gateway = gateway

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            return await self.gateway.table.handle(scope, receive, send)
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
