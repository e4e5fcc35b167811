"""HTTP/3 over QUIC and safe 0-RTT, against a running gatewayd, seen by independent clients:
niquests (HTTP/3 through qh3), ngtcp2's `gtlsclient` (GnuTLS), and aioquic's own client.

0-RTT is proved from the server side: a request served from early data reaches the upstream with
`Early-Data: 1`, which the gateway sets only then (a client's own is never forwarded). A small
recording upstream counts what arrives, so a request that must not get through (a POST in early
data, a replayed first flight) is shown never to.

The certificate (a throwaway CA and a leaf for 127.0.0.1) is generated per test module.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import niquests
import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from aioquic.tls import CipherSuite, SessionTicket
from conftest import HOST, ROOT, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gatewayd.server.quic.tickets import TicketStore
from gatewayd.store import MemoryStore, StoreFull

GTLSCLIENT = shutil.which("gtlsclient")
needs_gtlsclient = pytest.mark.skipif(
    GTLSCLIENT is None, reason="ngtcp2's gtlsclient is not installed (Debian package ngtcp2-client)"
)
RESPONSE_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 20.0

CONFIG = """
version: 1
server:
  tls: {{listen: ["{host}:{port}"], cert: "{cert}", key: "{key}"}}
  quic: {{alt_svc_max_age: 1h{quic_extra}}}
upstreams:
  demo:
    targets: ["{demo}"]
  recorder:
    targets: ["{recorder}"]
routes:
  - name: static
    match: {{path: /static}}
    respond: {{body: "static over any HTTP"}}
  - name: demo
    match: {{path_prefix: /demo}}
    upstream: demo
  - name: recorded
    match: {{path_prefix: /rec}}
    upstream: recorder
"""


# --- fixtures: certificate, upstreams, gateway ---------------------------------------------------


def _certificate(subject: x509.Name, issuer: x509.Name, public_key, signer, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # cert and CRL signing
        builder = builder.add_extension(usage, critical=True)
    else:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A CA certificate, and a certificate and key for 127.0.0.1 signed by it (rustls-based clients
    such as qh3 refuse a self-signed CA certificate used as the server's own)."""
    d = tmp_path_factory.mktemp("tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatewayd test CA")])
    ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    leaf = _certificate(leaf_name, ca_name, key.public_key(), ca_key, ca=False)
    files = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    return files


class Recorder:
    """A tiny HTTP/1.1 upstream that remembers every request it gets: (method, path, headers)."""

    def __init__(self):
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.seen.append((self.command, self.path, headers))
                self._drain_body(headers)
                body = json.dumps({"method": self.command, "path": self.path, "headers": headers}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _drain_body(self, headers):
                if "content-length" in headers:
                    self.rfile.read(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        self.rfile.read(size + 2)
                    self.rfile.readline()

            do_GET = do_HEAD = do_OPTIONS = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests_to(self, path: str) -> list[tuple[str, dict[str, str]]]:
        """(method, headers) of every request this upstream got for `path`."""
        return [(method, headers) for method, p, headers in self.seen if p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def recorder():
    r = Recorder()
    yield r
    r.close()


def free_tcp_udp_port() -> int:
    """A port number free on the loopback interface for both TCP (HTTPS) and UDP (HTTP/3)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP")


class H3Gateway:
    def __init__(self, gw, port: int, ca: Path):
        self.gw = gw
        self.port = port
        self.ca = str(ca)
        self.https = f"https://{HOST}:{port}"


def start(
    factory, tls_files, demo_url: str, recorder: Recorder, quic_extra: str = "", server_extra: str = "", tail: str = ""
) -> H3Gateway:
    """`tail`: more config text at the end (route items, then other top-level keys)."""
    port = free_tcp_udp_port()
    text = CONFIG.format(
        host=HOST,
        port=port,
        cert=tls_files["cert"],
        key=tls_files["key"],
        quic_extra=quic_extra,
        demo=demo_url,
        recorder=recorder.url,
    )
    if server_extra:
        text = text.replace("server:\n", f"server:\n{server_extra}", 1)
    gw = factory(text + textwrap.dedent(tail))
    _wait_for_http3(gw, port, workers=2 if "workers: 2" in server_extra else 1)
    return H3Gateway(gw, port, tls_files["ca"])


def _wait_for_http3(gw, port: int, workers: int) -> None:
    """The gateway factory waits for /health over cleartext HTTP; the HTTPS and HTTP/3 listeners come
    up a moment later, in every worker (a worker binding its UDP socket late would move a client's
    datagrams to itself in mid-handshake)."""
    deadline = time.monotonic() + 15
    while True:
        if gw.log().count("HTTP/3 on ") >= workers:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            pytest.fail(f"HTTP/3 and HTTPS listeners not up within 15s; stderr:\n{gw.log()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def demo(upstream):
    return upstream("demo")


@pytest.fixture(scope="module")
def h3(gatewayd_module, tls_files, demo, recorder) -> H3Gateway:
    return start(gatewayd_module, tls_files, demo.url, recorder)


def unique(prefix: str) -> str:
    return f"/rec/{prefix}-{uuid.uuid4().hex[:12]}"


# --- an aioquic HTTP/3 client that can send requests in 0-RTT ----------------------------------------


class H3Client(QuicConnectionProtocol):
    """Sends requests at once (before the handshake, when resuming: 0-RTT) and records the
    datagrams of its first flight, those sent before the server's first answer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.pending: dict[int, dict] = {}
        self.handshake: asyncio.Future = asyncio.get_running_loop().create_future()
        self.first_flight: list[bytes] = []
        self._answered = False

    def connection_made(self, transport) -> None:
        client = self

        class Recording:
            def sendto(self, data, addr=None):
                if not client._answered:
                    client.first_flight.append(bytes(data))
                transport.sendto(data, addr)

            def __getattr__(self, name):
                return getattr(transport, name)

        super().connection_made(Recording())

    def datagram_received(self, data, addr) -> None:
        self._answered = True
        super().datagram_received(data, addr)

    def quic_event_received(self, event) -> None:
        if isinstance(event, HandshakeCompleted) and not self.handshake.done():
            self.handshake.set_result(event)
        if isinstance(event, ConnectionTerminated):
            for r in self.pending.values():
                if not r["done"].done():
                    r["done"].set_exception(ConnectionError(f"connection closed: {event.reason_phrase}"))
        for ev in self.http.handle_event(event):
            r = self.pending.get(getattr(ev, "stream_id", None))
            if r is None:
                continue
            if isinstance(ev, HeadersReceived):
                if r["t_headers"] is None:
                    r["t_headers"] = time.perf_counter()
                r["headers"].extend(ev.headers)
            elif isinstance(ev, DataReceived):
                r["body"] += ev.data
            if getattr(ev, "stream_ended", False):
                r["done"].set_result(None)

    def send_request(self, method: str, path: str, body: bytes = b"", headers=()) -> dict:
        stream_id = self._quic.get_next_available_stream_id()
        head = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", f"{HOST}".encode()),
            (b":path", path.encode()),
        ]
        self.http.send_headers(stream_id, head + list(headers), end_stream=not body)
        if body:
            self.http.send_data(stream_id, body, end_stream=True)
        loop = asyncio.get_running_loop()
        r = self.pending[stream_id] = {"headers": [], "body": b"", "t_headers": None, "done": loop.create_future()}
        self.transmit()
        return r


class Response:
    def __init__(self, r: dict):
        self.status = int(dict(r["headers"])[b":status"])
        self.fields = [(k.decode(), v.decode()) for k, v in r["headers"] if not k.startswith(b":")]
        self.headers = dict(self.fields)
        self.body = r["body"]
        self.t_headers = r["t_headers"]

    def json(self):
        return json.loads(self.body)


async def h3_session(port: int, ca: str, requests, ticket=None):
    """Connect (resuming with `ticket`, if any, and sending `requests` in 0-RTT then), send every
    request before waiting for any, and return (responses, HandshakeCompleted, the newest ticket the
    server sent, the first-flight datagrams, the time the connection started)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    config.load_verify_locations(ca)
    config.session_ticket = ticket
    tickets = []
    t0 = time.perf_counter()
    async with connect(
        HOST, port, configuration=config, create_protocol=H3Client,
        session_ticket_handler=tickets.append, wait_connected=False,
    ) as client:  # fmt: skip
        sent = [client.send_request(*r) for r in requests]
        async with asyncio.timeout(RESPONSE_TIMEOUT_S):
            for r in sent:
                await r["done"]
            handshake = await client.handshake
            for _ in range(100):  # the ticket follows the handshake
                if tickets:
                    break
                await asyncio.sleep(0.01)
        return [Response(r) for r in sent], handshake, (tickets[-1] if tickets else None), client.first_flight, t0


def run(coro):
    return asyncio.run(coro)


# --- Alt-Svc on TCP, HTTP/3 with niquests ------------------------------------------------------------


def test_tcp_responses_advertise_http3(h3):
    expected = f'h3=":{h3.port}"; ma=3600'
    r = httpx.get(f"{h3.gw.url}/static", timeout=5)
    assert r.headers.get_list("alt-svc") == [expected]
    with httpx.Client(verify=ssl.create_default_context(cafile=h3.ca), timeout=5) as client:
        r = client.get(f"{h3.https}/static")
        assert r.status_code == 200 and r.headers["alt-svc"] == expected
        r = client.get(f"{h3.https}/nowhere")  # errors too
        assert r.status_code == 404 and r.headers["alt-svc"] == expected


def test_niquests_http3_static_and_proxied(h3):
    with niquests.Session(disable_http1=True, disable_http2=True) as s:
        r = s.get(f"{h3.https}/static", verify=h3.ca, timeout=5)
        assert (r.http_version, r.status_code, r.text) == (30, 200, "static over any HTTP")
        assert r.headers["server-timing"].startswith("total;dur=")
        assert r.headers["x-request-id"]

        r = s.get(f"{h3.https}/demo/anything?x=1", verify=h3.ca, timeout=5)
        assert (r.http_version, r.status_code) == (30, 200)
        assert r.headers["server-timing"].startswith("total;dur=")
        seen = r.json()
        assert seen["upstream"] == "demo" and seen["query"] == "x=1"
        assert seen["headers"]["x-forwarded-proto"] == "https"
        assert seen["headers"]["via"] == "3 gatewayd"
        assert "early-data" not in seen["headers"]  # a full handshake: nothing was early


def test_niquests_moves_to_http3_on_alt_svc(h3):
    """A client that knows nothing of HTTP/3 starts over TCP, reads Alt-Svc, and switches."""
    with niquests.Session() as s:
        first = s.get(f"{h3.https}/static", verify=h3.ca, timeout=5)
        assert first.http_version in (11, 20) and first.headers["alt-svc"] == f'h3=":{h3.port}"; ma=3600'
        second = s.get(f"{h3.https}/static", verify=h3.ca, timeout=5)
        assert (second.http_version, second.status_code) == (30, 200)


def test_client_early_data_header_is_never_forwarded(h3, recorder):
    path = unique("forged")
    httpx.get(f"{h3.gw.url}{path}", headers={"Early-Data": "1"}, timeout=5)
    with niquests.Session(disable_http1=True, disable_http2=True) as s:
        assert s.get(f"{h3.https}{path}", headers={"Early-Data": "1"}, verify=h3.ca, timeout=5).http_version == 30
    seen = recorder.requests_to(path)
    assert len(seen) == 2
    assert all("early-data" not in headers for _, headers in seen)


# --- Server and Date as a headers policy leaves them, over every HTTP version -----------------------------

FIXED_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"
SETTING_ROUTES = """
  - match: {path_prefix: /set}
    policies: [set-server-and-date]
    respond: {body: set}
  - match: {path_prefix: /proxied-set}
    policies: [set-server-and-date]
    upstream: demo
"""
REMOVING_ROUTES = """
  - match: {path_prefix: /removed}
    policies: [remove-server-and-date]
    respond: {body: removed}
  - match: {path_prefix: /proxied-removed}
    policies: [remove-server-and-date]
    upstream: demo
"""
SETTING_POLICY = f'  set-server-and-date: {{headers: {{response: {{set: {{Server: edge, Date: "{FIXED_DATE}"}}}}}}}}\n'
REMOVING_POLICY = "  remove-server-and-date: {headers: {response: {remove: [Server, Date]}}}\n"


@pytest.fixture(scope="module")
def edited(gatewayd_module, tls_files, demo, recorder, engine) -> H3Gateway:
    """A gateway with routes whose policies set, and on Hypercorn remove, the response's Server and
    Date (Granian adds its own to a response without them: `check` rejects removing them, see tests/golden)."""
    removes = engine == "hypercorn"
    routes = SETTING_ROUTES + (REMOVING_ROUTES if removes else "")
    policies = "policies:\n" + SETTING_POLICY + (REMOVING_POLICY if removes else "")
    return start(gatewayd_module, tls_files, demo.url, recorder, tail=routes + policies)


def server_and_date(h3: H3Gateway, version: str, path: str) -> tuple[int, list[str], list[str]]:
    """(status, Server values, Date values) of a GET over HTTP/1.1 or HTTP/2 on TLS, h2c, or HTTP/3."""
    if version == "3":
        responses, _, _, _, _ = run(h3_session(h3.port, h3.ca, [("GET", path)]))
        fields = responses[0].fields
        return responses[0].status, [v for k, v in fields if k == "server"], [v for k, v in fields if k == "date"]
    url = f"{h3.gw.url}{path}" if version == "h2c" else f"{h3.https}{path}"
    http1 = version == "1.1"
    verify = ssl.create_default_context(cafile=h3.ca)
    with httpx.Client(http1=http1, http2=not http1, verify=verify, timeout=5) as client:
        r = client.get(url)
    assert r.http_version == ("HTTP/1.1" if http1 else "HTTP/2")
    return r.status_code, r.headers.get_list("server"), r.headers.get_list("date")


VERSIONS = ["1.1", "2", "h2c", "3"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", ["/set", "/proxied-set/x"])
def test_a_policy_sets_server_and_date(edited, version, path):
    assert server_and_date(edited, version, path) == (200, ["edge"], [FIXED_DATE])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", ["/removed", "/proxied-removed/x"])
def test_a_policy_removes_server_and_date(edited, version, path, engine):
    if engine == "granian":
        pytest.skip("Granian adds its own Server and Date: `check` rejects removing them")
    assert server_and_date(edited, version, path) == (200, [], [])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path, status", [("/static", 200), ("/demo/x", 200), ("/nowhere", 404)])
def test_one_date_and_no_other_server_otherwise(edited, version, path, status, engine):
    """Without a policy: one Date, the gateway's (the upstream's is dropped), and Server only where
    Granian adds its own."""
    got, servers, dates = server_and_date(edited, version, path)
    assert got == status and len(dates) == 1
    assert abs(email.utils.parsedate_to_datetime(dates[0]).timestamp() - time.time()) < 5
    assert servers == (["granian"] if engine == "granian" and version != "3" else [])


# --- policies over every HTTP version ---------------------------------------------------------------------

POLICY_KEY = "every-version-key-01"
POLICY_ORIGIN = "https://app.example.com"
POLICED = f"""
  - match: {{path_prefix: /policed}}
    policies: [guarded]
    upstream: demo
  - match: {{path_prefix: /bounded}}
    policies: [bounded]
    upstream: demo
policies:
  guarded:
    cors: {{origins: ["{POLICY_ORIGIN}"], headers: [Authorization]}}
    api_key: {{keys: [{{id: acme, key: {POLICY_KEY}}}]}}
    rate_limit: {{limit: 1000, per: 1s, burst: 1000, key: consumer}}
    validate: {{required_query: [v]}}
  bounded:
    validate: {{max_body: 1KiB}}
"""


@pytest.fixture(scope="module")
def policed(gatewayd_module, tls_files, demo, recorder) -> H3Gateway:
    return start(gatewayd_module, tls_files, demo.url, recorder, tail=POLICED)


def exchange(h3: H3Gateway, version: str, method: str, path: str, headers: dict) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request over HTTP/1.1 or HTTP/2 on TLS, h2c, or HTTP/3."""
    if version == "3":
        fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        responses, _, _, _, _ = run(h3_session(h3.port, h3.ca, [(method, path, b"", fields)]))
        return responses[0].status, responses[0].headers, responses[0].body
    url = f"{h3.gw.url}{path}" if version == "h2c" else f"{h3.https}{path}"
    http1 = version == "1.1"
    with httpx.Client(http1=http1, http2=not http1, verify=ssl.create_default_context(cafile=h3.ca), timeout=5) as client:
        r = client.request(method, url, headers=headers)
    return r.status_code, dict(r.headers), r.content


@pytest.mark.parametrize("version", VERSIONS)
def test_policies_answer_alike_over_every_version(policed, version):
    origin = {"Origin": POLICY_ORIGIN}
    status, headers, _ = exchange(policed, version, "OPTIONS", "/policed/x", {**origin, "Access-Control-Request-Method": "GET"})
    assert status == 204 and headers["access-control-allow-origin"] == POLICY_ORIGIN
    status, headers, body = exchange(policed, version, "GET", "/policed/x?v=1", origin)
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    assert headers["access-control-allow-origin"] == POLICY_ORIGIN and "www-authenticate" in headers
    key = {**origin, "Authorization": f"Bearer {POLICY_KEY}"}
    status, headers, body = exchange(policed, version, "GET", "/policed/x", key)
    assert status == 400 and json.loads(body)["errors"]
    status, headers, body = exchange(policed, version, "GET", "/policed/x?v=1", key)
    assert status == 200, body
    assert json.loads(body)["headers"]["x-consumer-id"] == "acme"
    assert "ratelimit" in headers and "ratelimit-policy" in headers


def test_an_upload_going_on_after_its_413_is_stopped_and_the_connection_kept(policed):
    """A body still coming after its stream was answered (413 past max_body) is dropped and the client
    asked to stop sending (STOP_SENDING, H3_NO_ERROR); the connection goes on serving, and the
    gateway logs no traceback for it."""

    async def go():
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
        config.load_verify_locations(policed.ca)
        async with connect(HOST, policed.port, configuration=config, create_protocol=H3Client) as client:
            stream_id = client._quic.get_next_available_stream_id()
            head = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", HOST.encode()), (b":path", b"/bounded/up")]
            r = client.pending[stream_id] = {"headers": [], "body": b"", "t_headers": None, "done": asyncio.get_running_loop().create_future()}
            client.http.send_headers(stream_id, head)
            client.http.send_data(stream_id, b"z" * 2048, end_stream=False)
            client.transmit()
            async with asyncio.timeout(RESPONSE_TIMEOUT_S):
                await r["done"]
                for _ in range(20):  # 80 KiB more, after the answer
                    try:
                        client.http.send_data(stream_id, b"z" * 4096, end_stream=False)
                    except Exception:  # the stream's sending side was reset on the server's request
                        break
                    client.transmit()
                    await asyncio.sleep(0.01)
                after = client.send_request("GET", "/static")
                await after["done"]
            return Response(r), Response(after)

    refused, after = run(go())
    assert refused.status == 413 and refused.json()["error"] == "body_too_large"
    assert after.status == 200 and after.body == b"static over any HTTP"
    time.sleep(0.2)
    assert "Traceback" not in policed.gw.log(), policed.gw.log()[-3000:]


# --- 0-RTT with ngtcp2's client ---------------------------------------------------------------------------


def gtlsclient(h3, tmp_path: Path, name: str, path: str, *args: str) -> str:
    """One run of gtlsclient, resuming from (and saving to) `name`.session / `name`.tp in tmp_path."""
    cmd = [
        GTLSCLIENT, "--exit-on-all-streams-close", "--no-quic-dump", "--timeout=5s",
        f"--session-file={tmp_path / (name + '.session')}", f"--tp-file={tmp_path / (name + '.tp')}",
        *args, HOST, str(h3.port), f"{h3.https}{path}",
    ]  # fmt: skip
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, errors="replace")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def sent_0rtt(output: str) -> bool:
    return " 0RTT STREAM" in output


REJECTED = "Early data was rejected by server"


@needs_gtlsclient
def test_gtlsclient_resumes_with_0rtt_and_the_request_is_served_from_early_data(h3, recorder, tmp_path):
    first, second = unique("gtls-first"), unique("gtls-0rtt")
    out = gtlsclient(h3, tmp_path, "s", first)
    assert not sent_0rtt(out) and (tmp_path / "s.session").stat().st_size > 0
    out = gtlsclient(h3, tmp_path, "s", second)
    assert sent_0rtt(out) and REJECTED not in out, out[-3000:]
    assert "[:status: 200]" in out
    [(method, headers)] = recorder.requests_to(second)
    assert method == "GET" and headers.get("early-data") == "1"  # served from 0-RTT, as the gateway saw it
    [(_, headers)] = recorder.requests_to(first)
    assert "early-data" not in headers


@needs_gtlsclient
def test_gtlsclient_post_in_early_data_gets_425(h3, recorder, tmp_path):
    gtlsclient(h3, tmp_path, "p", unique("gtls-setup"))
    body = tmp_path / "body"
    body.write_bytes(b"charge the card")
    path = unique("gtls-post")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    out = gtlsclient(h3, tmp_path, "p", path, "-m", "POST", f"--data={body}", f"--download={downloads}")
    assert sent_0rtt(out) and REJECTED not in out, out[-3000:]
    assert "[:status: 425]" in out
    [saved] = downloads.iterdir()
    assert json.loads(saved.read_bytes())["error"] == "too_early"
    assert recorder.requests_to(path) == []


@needs_gtlsclient
def test_gtlsclient_ticket_is_single_use(h3, recorder, tmp_path):
    gtlsclient(h3, tmp_path, "t", unique("gtls-setup"))
    for ext in (".session", ".tp"):
        shutil.copy(tmp_path / ("t" + ext), tmp_path / ("again" + ext))
    once, twice = unique("gtls-once"), unique("gtls-twice")
    out = gtlsclient(h3, tmp_path, "t", once)
    assert sent_0rtt(out) and REJECTED not in out, out[-3000:]
    out = gtlsclient(h3, tmp_path, "again", twice)  # the same ticket again
    assert sent_0rtt(out) and REJECTED in out, out[-3000:]
    [(_, headers)] = recorder.requests_to(once)
    assert headers.get("early-data") == "1"
    [(_, headers)] = recorder.requests_to(twice)  # resent by the client after a full handshake
    assert "early-data" not in headers


# --- 0-RTT with aioquic's client: 425, replays, early_data: off, several workers ----------------------


def test_0rtt_serves_safe_methods_and_answers_425_to_others(h3, recorder):
    _, handshake, ticket, _, _ = run(h3_session(h3.port, h3.ca, [("GET", "/static")]))
    assert not handshake.session_resumed and ticket is not None and ticket.max_early_data_size == 0xFFFFFFFF
    # (no HEAD here: aioquic's client does not know a response to HEAD has no body)
    get, options, post, delete = unique("get"), unique("options"), unique("post"), unique("delete")
    requests = [("GET", get), ("OPTIONS", options), ("POST", post, b'{"amount": 100}'), ("DELETE", delete)]
    responses, handshake, _, _, _ = run(h3_session(h3.port, h3.ca, requests, ticket))
    assert handshake.session_resumed and handshake.early_data_accepted
    r_get, r_options, r_post, r_delete = responses
    assert r_get.status == 200 and r_get.json()["headers"]["early-data"] == "1"
    assert r_options.status == 200 and r_options.json()["headers"]["early-data"] == "1"
    for r in (r_post, r_delete):
        assert r.status == 425
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "too_early" and r.json()["request_id"] == r.headers["x-request-id"]
        assert r.headers["server-timing"].startswith("total;dur=")
    assert [m for m, _ in recorder.requests_to(get)] == ["GET"]
    assert [m for m, _ in recorder.requests_to(options)] == ["OPTIONS"]
    assert recorder.requests_to(post) == [] and recorder.requests_to(delete) == []


def test_replayed_first_flight_is_not_served(h3, recorder):
    """An attacker resends, byte for byte, the first flight (ClientHello and 0-RTT packets) of a
    connection that was served: its ticket is gone, so nothing in it reaches the upstream again."""
    _, _, ticket, _, _ = run(h3_session(h3.port, h3.ca, [("GET", "/static")]))
    get, post = unique("replay-get"), unique("replay-post")
    responses, handshake, _, flight, _ = run(h3_session(h3.port, h3.ca, [("GET", get), ("POST", post, b"x")], ticket))
    assert handshake.early_data_accepted and [r.status for r in responses] == [200, 425]
    assert flight and [m for m, _ in recorder.requests_to(get)] == ["GET"]
    time.sleep(0.5)  # the server forgets the closed connection once its draining period is over

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind((HOST, 0))
        attacker.settimeout(5)
        for datagram in flight:
            attacker.sendto(datagram, (HOST, h3.port))
        answer, _ = attacker.recvfrom(65536)
        assert answer[0] & 0xF0 == 0xC0  # a long-header Initial packet: a new handshake began
    time.sleep(0.5)
    assert [m for m, _ in recorder.requests_to(get)] == ["GET"]
    assert recorder.requests_to(post) == []


def test_early_data_off_issues_no_tickets(gatewayd, tls_files, demo, recorder):
    h3 = start(gatewayd, tls_files, demo.url, recorder, quic_extra=", early_data: off")
    path = unique("off")
    responses, handshake, ticket, _, _ = run(h3_session(h3.port, h3.ca, [("GET", path)]))
    assert responses[0].status == 200 and not handshake.session_resumed
    assert ticket is None  # nothing to resume with, so no 0-RTT


def test_resumption_on_another_worker_still_gets_0rtt(gatewayd, tls_files, demo, recorder, engine):
    """Tickets live in the host store: a client resuming on a worker other than the one that issued
    its ticket is still accepted in 0-RTT. Which worker answers is up to the kernel (SO_REUSEPORT
    hashes the client's address), so a few connections are made until one moves."""
    if engine != "granian":
        pytest.skip("the host store is the same whatever the TCP engine; checked once")
    h3 = start(gatewayd, tls_files, demo.url, recorder, server_extra="  workers: 2\n")
    responses, _, ticket, _, _ = run(h3_session(h3.port, h3.ca, [("GET", "/health")]))
    issuer = responses[0].json()["worker"]
    moved = 0
    for _ in range(12):
        responses, handshake, ticket, _, _ = run(h3_session(h3.port, h3.ca, [("GET", "/health")], ticket))
        assert handshake.session_resumed and handshake.early_data_accepted
        worker = responses[0].json()["worker"]
        moved += worker != issuer
        issuer = worker  # this connection's worker issued the next ticket
        if moved >= 2:
            break
    assert moved >= 1, "every connection landed on the worker that issued its ticket"


def test_udp_port_in_use_is_a_start_up_error(tls_files, tmp_path):
    port = free_tcp_udp_port()
    config = tmp_path / "gateway.yaml"
    cert, key = tls_files["cert"], tls_files["key"]
    config.write_text(
        textwrap.dedent(f"""\
            version: 1
            server:
              workers: 1
              tls: {{listen: ["{HOST}:{port}"], cert: "{cert}", key: "{key}"}}
              quic: {{}}
            routes:
              - match: {{path: /}}
                respond: {{}}
            """)
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, port))
        cmd = [sys.executable, "-m", "gatewayd", "--config", str(config), "--listen", f"{HOST}:{free_port()}"]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, cwd=ROOT)
    assert done.returncode == 1
    assert f"cannot listen on {HOST}:{port} (UDP)" in done.stderr


# --- the ticket store adapter, without a network ----------------------------------------------------


def _ticket(lifetime_s: float = 86400) -> SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    return SessionTicket(
        age_add=1234,
        cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=now + datetime.timedelta(seconds=lifetime_s),
        not_valid_before=now,
        resumption_secret=b"\x01" * 32,
        server_name=None,
        ticket=uuid.uuid4().bytes * 4,
        max_early_data_size=0xFFFFFFFF,
        other_extensions=[(0x39, b"\x00\x01transport-parameters")],
    )


def test_tickets_round_trip_once_and_expire_with_their_lifetime():
    clock = [1000.0]
    store = MemoryStore(clock=lambda: clock[0])
    tickets = TicketStore(store)
    kept, short = _ticket(), _ticket(lifetime_s=60)
    tickets.add(kept)
    tickets.add(short)
    assert tickets.take(kept.ticket) == kept
    assert tickets.take(kept.ticket) is None  # single-use
    clock[0] += 61
    assert tickets.take(short.ticket) is None  # gone after its lifetime


def test_tickets_survive_a_full_store_and_odd_labels():
    class Full(MemoryStore):
        def put(self, key, value, ttl=None):
            raise StoreFull()

    TicketStore(Full()).add(_ticket())  # the client will simply not resume
    store = MemoryStore()
    tickets = TicketStore(store)
    assert tickets.take(b"x" * 10_000) is None
    store.put(b"tickets/garbage", b"not json")
    assert tickets.take(b"garbage") is None


def test_max_concurrent_streams_is_the_http3_stream_limit(gatewayd, tls_files, demo, recorder):
    h3 = start(gatewayd, tls_files, demo.url, recorder, server_extra="  limits: {max_concurrent_streams: 3}\n")

    async def granted() -> int:
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
        config.load_verify_locations(h3.ca)
        async with connect(HOST, h3.port, configuration=config) as client:
            return client._quic._remote_max_streams_bidi  # what the server's transport parameters allow

    assert run(granted()) == 3
