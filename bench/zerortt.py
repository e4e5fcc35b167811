"""Time to first byte of fresh and resumed (0-RTT) HTTP/3 requests over a delayed path.

A small asyncio UDP relay on loopback holds every datagram for ``delay`` seconds
in each direction (25 ms each way: a 50 ms round trip), and aioquic's client
connects through it. Each sample is a pair: a fresh connection (full handshake,
no ticket), then a new connection resuming with the session ticket the fresh
one got, sending its request in 0-RTT early data. Time to first byte runs from
just before the client's first datagram to the arrival of the response headers.

A fresh request needs the handshake's round trip and then the request's, about
2 RTT; a resumed one sends the request with the ClientHello, about 1 RTT.

``python bench/zerortt.py https://127.0.0.1:PORT/path --ca FILE`` prints one
line, ``ZERORTT_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from urllib.parse import urlsplit

MARKER = "ZERORTT_RESULT "


class _Leg(asyncio.DatagramProtocol):
    def __init__(self, on_datagram):
        self.on_datagram = on_datagram
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.on_datagram(data, addr)


class DelayRelay:
    """Listens on 127.0.0.1:<port>; relays each client (by address) to ``target`` over its own
    socket, holding every datagram ``delay`` seconds in each direction."""

    def __init__(self, target: tuple[str, int], delay: float):
        self.target = target
        self.delay = delay
        self.front: _Leg | None = None
        self.backs: dict[tuple, _Leg] = {}
        self.loop = None

    async def start(self) -> int:
        self.loop = asyncio.get_running_loop()
        _, self.front = await self.loop.create_datagram_endpoint(
            lambda: _Leg(self._from_client), local_addr=("127.0.0.1", 0))
        return self.front.transport.get_extra_info("sockname")[1]

    def _from_client(self, data: bytes, client) -> None:
        back = self.backs.get(client)
        if back is None:
            back = _Leg(lambda d, _a, c=client: self.loop.call_later(self.delay, self._to_client, d, c))
            self.backs[client] = back
            self.loop.create_task(self._open(back, data))
            return
        self.loop.call_later(self.delay, self._to_server, back, data)

    async def _open(self, back: _Leg, first: bytes) -> None:
        await self.loop.create_datagram_endpoint(lambda: back, remote_addr=self.target)
        self.loop.call_later(self.delay, self._to_server, back, first)

    def _to_server(self, back: _Leg, data: bytes) -> None:
        if back.transport is not None and not back.transport.is_closing():
            back.transport.sendto(data)

    def _to_client(self, data: bytes, client) -> None:
        if self.front is not None and not self.front.transport.is_closing():
            self.front.transport.sendto(data, client)

    def close(self) -> None:
        for back in self.backs.values():
            if back.transport is not None:
                back.transport.close()
        if self.front is not None and self.front.transport is not None:
            self.front.transport.close()


async def one_request(port: int, authority: str, path: str, ca: str | None, ticket, server_name: str,
                      timeout: float) -> dict:
    """One connection through the relay with one GET: TTFB, whether it resumed and sent early data
    that the server accepted, and the ticket the server sent for next time."""
    import ssl

    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import HandshakeCompleted

    class Client(QuicConnectionProtocol):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.http = H3Connection(self._quic)
            self.headers_at = self._loop.create_future()
            self.handshake = self._loop.create_future()
            self.status = None

        def quic_event_received(self, event):
            if isinstance(event, HandshakeCompleted) and not self.handshake.done():
                self.handshake.set_result(event)
            for ev in self.http.handle_event(event):
                if isinstance(ev, HeadersReceived) and not self.headers_at.done():
                    self.status = int(dict(ev.headers).get(b":status", b"0"))
                    self.headers_at.set_result(time.perf_counter())

        async def wait_closed(self):
            """Leaving ``connect()`` sends CONNECTION_CLOSE; don't wait out the draining period
            (three probe timeouts, long over a delayed path) before closing the socket."""

    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name)
    if ca:
        config.load_verify_locations(ca)
    else:
        config.verify_mode = ssl.CERT_NONE
    config.session_ticket = ticket
    tickets = []
    t0 = time.perf_counter()
    async with asyncio.timeout(timeout):
        async with connect("127.0.0.1", port, configuration=config, create_protocol=Client,
                           session_ticket_handler=tickets.append, wait_connected=False) as client:
            head = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()),
                    (b":path", path.encode())]
            stream_id = client._quic.get_next_available_stream_id()
            client.http.send_headers(stream_id, head, end_stream=True)
            client.transmit()  # with a ticket, in 0-RTT packets together with the ClientHello
            t_headers = await client.headers_at
            handshake = await client.handshake
            for _ in range(100):  # the ticket comes after the handshake
                if tickets:
                    break
                await asyncio.sleep(0.01)
    return {
        "ttfb_ms": (t_headers - t0) * 1000,
        "status": client.status,
        "resumed": bool(handshake.session_resumed),
        "early_data": bool(handshake.early_data_accepted),
        "ticket": tickets[-1] if tickets else None,
    }


async def measure(url: str, ca: str | None, samples: int, delay: float, server_name: str = "localhost",
                  timeout: float = 10.0) -> dict:
    u = urlsplit(url)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    relay = DelayRelay((u.hostname, u.port or 443), delay)
    port = await relay.start()
    fresh, resumed, errors, accepted, statuses = [], [], [], 0, []
    try:
        # one unmeasured pair first: the server's and the client's first connection pay for imports
        # and lazy initialisation, which is not what this measures
        for i in range(samples + 1):
            try:
                f = await one_request(port, u.netloc, path, ca, None, server_name, timeout)
                if f["ticket"] is None:
                    errors.append("no session ticket after a full handshake")
                    continue
                r = await one_request(port, u.netloc, path, ca, f["ticket"], server_name, timeout)
            except (ConnectionError, OSError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if i == 0:
                continue
            fresh.append(f["ttfb_ms"])
            resumed.append(r["ttfb_ms"])
            accepted += r["early_data"]
            statuses += [f["status"], r["status"]]
    finally:
        relay.close()
    return {
        "rtt_ms": 2 * delay * 1000,
        "samples": len(fresh),
        "fresh_ms": fresh,
        "resumed_ms": resumed,
        "fresh_median_ms": statistics.median(fresh) if fresh else None,
        "resumed_median_ms": statistics.median(resumed) if resumed else None,
        "early_data_accepted": accepted,
        "bad_status": sum(1 for s in statuses if not s or s >= 400),
        "errors": errors,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="zerortt.py", description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--ca")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--delay-ms", type=float, default=25.0, help="added each way (default 25: 50 ms RTT)")
    ap.add_argument("--server-name", default="localhost")
    args = ap.parse_args(argv)
    try:
        import aioquic  # noqa: F401
    except ImportError:
        raise SystemExit("the 0-RTT measurement needs aioquic: pip install -e '.[bench]'") from None
    out = asyncio.run(measure(args.url, args.ca, args.samples, args.delay_ms / 1000, args.server_name))
    print(MARKER + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
