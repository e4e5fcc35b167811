"""A small demo upstream for gatewayd's examples and tests, on Python's standard library alone.

It runs with any python3, no virtual environment needed:

    python3 examples/upstream.py [--port 9001] [--name a]

GET  /anything          -> JSON with the path, query, headers seen and this server's name
POST|PUT /anything      -> echoes the request body back, streamed
GET  .../bytes/N        -> N bytes, streamed in 64 KiB chunks
GET  .../slow/MS        -> waits MS milliseconds, then answers
GET  .../status/CODE    -> answers with that status

HTTP/1.1 with keep-alive, one thread per connection: made to be correct, not fast (the benchmarks
use nginx as their upstream).
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

CHUNK = 65536


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked bodies both ways

    def do_GET(self) -> None:
        self._answer()

    do_HEAD = do_DELETE = do_OPTIONS = do_GET

    def do_POST(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in self._body():  # each piece is sent back as it arrives
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    do_PUT = do_PATCH = do_POST

    def _answer(self) -> None:
        for _ in self._body():  # read to the end, so that the connection can carry the next request
            pass
        target, _, query = self.path.partition("?")
        path = unquote(target)
        parts = path.strip("/").split("/")[-2:]  # the last two segments, whatever prefix a gateway kept
        kind, arg = (parts[0], int(parts[1])) if len(parts) == 2 and parts[1].isdigit() else (None, 0)
        if kind == "bytes":
            self.send_response(200)
            self.send_header("Content-Length", str(arg))
            self.end_headers()
            if self.command != "HEAD":
                for start in range(0, arg, CHUNK):
                    self.wfile.write(b"x" * min(CHUNK, arg - start))
            return
        if kind == "slow":
            time.sleep(arg / 1000)
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = json.dumps(
            {"upstream": self.server.name, "method": self.command, "path": path, "query": query, "headers": headers}
        ).encode()
        self.send_response(arg if kind == "status" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self):
        """The request body, in pieces as they arrive: by Content-Length, or chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while size := int(self.rfile.readline().split(b";")[0], 16):
                yield self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline().strip():  # trailer fields, up to the empty line
                pass
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0 and (chunk := self.rfile.read(min(remaining, CHUNK))):
            remaining -= len(chunk)
            yield chunk

    def log_request(self, code="-", size="-") -> None:
        pass  # errors are still logged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--name", default="upstream")
    args = p.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.name = args.name
    print(f"upstream {args.name!r} on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
