"""A small demo upstream for gatewayd's examples and tests (ASGI, served by Granian).

    python examples/upstream.py [--port 9001] [--name a]

GET  /anything          -> JSON with the path, query, headers seen and this server's name
POST|PUT /anything      -> echoes the request body back, streamed
GET  .../bytes/N        -> N bytes, streamed in 64 KiB chunks
GET  .../slow/MS        -> waits MS milliseconds, then answers
GET  .../status/CODE    -> answers with that status
"""

from __future__ import annotations

import argparse
import asyncio
import json


def make_app(name: str):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        parts = path.strip("/").split("/")[-2:]  # the last two segments, whatever prefix a gateway kept
        status = 200
        if scope["method"] in ("POST", "PUT", "PATCH"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
            while True:
                message = await receive()
                await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": True})
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.body", "body": b""})
            return
        if len(parts) == 2 and parts[0] == "bytes" and parts[1].isdigit():
            remaining = int(parts[1])
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(remaining).encode())]})
            chunk = b"x" * 65536
            while remaining > 0:
                n = min(remaining, len(chunk))
                remaining -= n
                await send({"type": "http.response.body", "body": chunk[:n], "more_body": remaining > 0})
            return
        if len(parts) == 2 and parts[0] == "slow" and parts[1].isdigit():
            await asyncio.sleep(int(parts[1]) / 1000)
        if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            status = int(parts[1])
        body = json.dumps(
            {
                "upstream": name,
                "method": scope["method"],
                "path": path,
                "query": scope["query_string"].decode("latin-1"),
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvloop
    from granian.constants import Interfaces
    from granian.server.embed import Server

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--name", default="upstream")
    args = p.parse_args()
    server = Server(make_app(args.name), address=args.host, port=args.port, interface=Interfaces.ASGINL, log_enabled=False)
    print(f"upstream {args.name!r} on http://{args.host}:{args.port}", flush=True)
    uvloop.run(server.serve())


if __name__ == "__main__":
    main()
