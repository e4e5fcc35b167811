"""The admin listener: purges of the response cache, on an address of its own, behind a key.

`POST /cache/purge` with `Authorization: Bearer <key>` and one of `{"url": "/path?query"}` (every
host and variant of that URL), `{"prefix": "/path/"}` or `{"tag": "name"}` (a surrogate key) as
its JSON body; the answer `{"purged": N}` comes once every worker of the host has applied it
(tiers.py). Every worker listens on the address (SO_REUSEPORT), so any of them can take a purge.
Admin traffic is rare and small: a plain asyncio server with h11 (one request per connection)
serves it, off the engines that serve the gateway's clients.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from urllib.parse import unquote, urlsplit

import h11

from .request import url_of
from .tiers import PURGE_SETTLE

log = logging.getLogger("gatewayd.cache")

MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0


class AdminListener:
    def __init__(self, listen, key: str, tiers):
        self.listen = listen
        self._key = key.encode()
        self.tiers = tiers
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _serve(self) -> None:
        try:
            server = await asyncio.start_server(self._connection, self.listen.host, self.listen.port, reuse_port=True)
        except OSError as exc:
            log.error("cache admin listener on %s: %s", self.listen, exc)
            return
        log.info("cache admin listener on http://%s", self.listen)
        async with server:
            await server.serve_forever()

    async def _connection(self, reader, writer) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                request, body = await _read(conn, reader)
            if request is None:
                status, answer = 400, _error("bad_request", "malformed request")
            else:
                status, answer = await self._answer(request, body)
        except (TimeoutError, h11.RemoteProtocolError, ConnectionError):
            status, answer = 400, _error("bad_request", "malformed or incomplete request")
        try:
            payload = json.dumps(answer).encode()
            head = [("content-type", "application/json"), ("content-length", str(len(payload))), ("connection", "close")]
            writer.write(
                conn.send(h11.Response(status_code=status, headers=head))
                + conn.send(h11.Data(data=payload))
                + conn.send(h11.EndOfMessage())
            )
            await writer.drain()
        except (h11.LocalProtocolError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, dict]:
        if request.target.split(b"?")[0] != b"/cache/purge":
            return 404, _error("not_found", "the admin listener serves POST /cache/purge")
        if request.method != b"POST":
            return 405, _error("method_not_allowed", "use POST")
        auth = dict(request.headers).get(b"authorization", b"")
        if not (auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self._key)):
            return 401, _error("unauthorized", "a valid admin key is required")
        try:
            ((kind, value),) = json.loads(body).items()
            if kind not in ("url", "prefix", "tag") or not isinstance(value, str) or not value:
                raise ValueError
        except (ValueError, AttributeError):
            return 400, _error("bad_request", 'the body must be one of {"url": ...}, {"prefix": ...}, {"tag": ...}')
        if kind == "tag":
            arg = value.encode("utf-8")
        else:
            parts = urlsplit(value)
            arg = url_of(unquote(parts.path or "/"), parts.query.encode("latin-1"))
        purged = self.tiers.purge(kind, arg)
        if self.tiers.l2 is not None:
            await asyncio.sleep(PURGE_SETTLE)  # the other workers apply it meanwhile
        log.info("cache purge by %s %r: %d stored responses", kind, value, purged)
        return 200, {"purged": purged}


async def _read(conn: h11.Connection, reader) -> tuple[h11.Request | None, bytes]:
    request, body = None, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(16 * 1024)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return None, b""
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


def _error(error: str, message: str) -> dict:
    return {"error": error, "message": message}
