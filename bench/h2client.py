"""A minimal blocking HTTP/2 client (h2 over TLS, or h2c with prior knowledge) on the ``h2``
package, for the checks made before load and for sequential Server-Timing sampling."""

from __future__ import annotations

import socket
import ssl


class H2Client:
    def __init__(self, host: str, port: int, tls: bool, ca: str | None = None, timeout: float = 5.0,
                 server_name: str = "localhost"):
        try:
            import h2.config
            import h2.connection
            import h2.events
        except ImportError:
            raise SystemExit("the HTTP/2 checks need the h2 package (a dependency of hypercorn)") from None
        self._events = h2.events
        self.authority = f"{host}:{port}"
        self.scheme = "https" if tls else "http"
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if tls:
                ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
                ctx.set_alpn_protocols(["h2"])
                sock = ctx.wrap_socket(sock, server_hostname=server_name)
                if sock.selected_alpn_protocol() != "h2":
                    raise ConnectionError(f"ALPN chose {sock.selected_alpn_protocol()!r}, not h2")
            self.sock = sock
            self.conn = h2.connection.H2Connection(
                config=h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
            self.conn.initiate_connection()
            self.sock.sendall(self.conn.data_to_send())
        except BaseException:
            sock.close()
            raise

    def request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body)."""
        ev_mod = self._events
        sid = self.conn.get_next_available_stream_id()
        head = [(":method", method), (":scheme", self.scheme), (":authority", self.authority), (":path", path)]
        head += [(k.lower(), v) for k, v in headers.items()]
        self.conn.send_headers(sid, head, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        status, resp_headers, body = 0, {}, b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed before the response ended")
            for ev in self.conn.receive_data(data):
                if isinstance(ev, ev_mod.ResponseReceived) and ev.stream_id == sid:
                    for k, v in ev.headers:
                        if k == ":status":
                            status = int(v)
                        else:
                            resp_headers[k] = v
                elif isinstance(ev, ev_mod.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, ev_mod.StreamReset) and ev.stream_id == sid:
                    raise ConnectionError(f"stream reset, error code {ev.error_code}")
                elif isinstance(ev, ev_mod.ConnectionTerminated):
                    raise ConnectionError(f"GOAWAY, error code {ev.error_code}")
                elif isinstance(ev, ev_mod.StreamEnded) and ev.stream_id == sid:
                    self.sock.sendall(self.conn.data_to_send())
                    return status, resp_headers, body
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.sock.sendall(self.conn.data_to_send())
        except OSError:
            pass
        self.sock.close()
