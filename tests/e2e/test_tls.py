"""HTTPS listeners (`server.tls`) on both engines, with real clients: HTTP/1.1 and HTTP/2 chosen by
ALPN, TLS 1.2 accepted and 1.1 refused, h2c on the plain listener, h2load over both, the key formats
accepted, and how `check` and reloads treat the certificate and key files.

The certificates are self-signed and made for each test session in a temporary folder."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import HOST, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CURL = shutil.which("curl")
H2LOAD = shutil.which("h2load")
CLIENT_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 10.0

_KEY_FORMATS = {
    "pkcs8": serialization.PrivateFormat.PKCS8,  # BEGIN PRIVATE KEY
    "traditional": serialization.PrivateFormat.TraditionalOpenSSL,  # BEGIN RSA / EC PRIVATE KEY
}


def make_certificate(directory: Path, name: str, kind: str = "rsa", key_format: str = "pkcs8") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 and its unencrypted key: (cert, key) PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, _KEY_FORMATS[key_format], serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    """A folder with gateway.crt/.key (RSA, PKCS#8), rsa1.crt/.key (PKCS#1), ec1.crt/.key (SEC1) and other.crt/.key."""
    d = tmp_path_factory.mktemp("certs")
    make_certificate(d, "gateway")
    make_certificate(d, "rsa1", "rsa", "traditional")
    make_certificate(d, "ec1", "ec", "traditional")
    make_certificate(d, "other", "ec")
    return d


CONFIG = """
version: 1
server:
  tls:
    listen: ["{host}:{tls_port}"]
    cert: {cert}
    key: {key}
upstreams:
  a:
    targets: ["{a}"]
routes:
  - match: {{path_prefix: /api}}
    upstream: a
  - match: {{path: /}}
    respond: {{json: {{ok: true}}}}
"""


class TLSGateway:
    def __init__(self, gw, tls_port: int, cafile: Path):
        self.gw = gw
        self.engine = gw.engine
        self.tls_port = tls_port
        self.https = f"https://{HOST}:{tls_port}"
        self.cafile = cafile


def wait_for_port(port: int, gw) -> None:
    """The gateway answers on its plain port when started; wait for its TLS listener too."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            if gw.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no TLS listener on port {port}; stderr:\n{gw.log()}")
            time.sleep(0.05)


def start_tls_gateway(factory, certs: Path, upstream_url: str, cert: str = "gateway.crt", key: str = "gateway.key") -> TLSGateway:
    tls_port = free_port()
    gw = factory(CONFIG.format(host=HOST, tls_port=tls_port, cert=certs / cert, key=certs / key, a=upstream_url))
    wait_for_port(tls_port, gw)
    return TLSGateway(gw, tls_port, certs / cert)


@pytest.fixture(scope="module")
def tls_gw(gatewayd_module, upstream, certs) -> TLSGateway:
    return start_tls_gateway(gatewayd_module, certs, upstream("a").url)


def curl(*args: str) -> subprocess.CompletedProcess:
    if CURL is None:
        pytest.skip("curl is not installed")
    return subprocess.run([CURL, "-sS", "--max-time", str(CLIENT_TIMEOUT_S), *args], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S + 5)


def curl_version_and_body(*args: str) -> tuple[str, str]:
    """(HTTP version, body) of a curl request; `%{http_version}` is written after a marker line."""
    r = curl("-w", "\n@@%{http_version}", *args)
    assert r.returncode == 0, r.stderr
    body, _, version = r.stdout.rpartition("\n@@")
    return version, body


# --- ALPN: HTTP/1.1 and HTTP/2 ------------------------------------------------------------------


@pytest.mark.parametrize("flag, version", [("--http1.1", "1.1"), ("--http2", "2")])
def test_curl_gets_the_version_it_asks_for_by_alpn(tls_gw, flag, version):
    got, body = curl_version_and_body(flag, "--cacert", str(tls_gw.cafile), f"{tls_gw.https}/api/hello")
    assert got == version
    seen = json.loads(body)
    assert seen["path"] == "/api/hello"
    assert seen["headers"]["x-forwarded-proto"] == "https"  # the upstream learns the client used TLS


def test_certificate_verifies_against_its_own_ca(tls_gw):
    """The gateway serves the configured certificate: verification by a client that trusts it passes."""
    ctx = ssl.create_default_context(cafile=str(tls_gw.cafile))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((HOST, tls_gw.tls_port), timeout=CLIENT_TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)


def test_httpx_over_http2(tls_gw):
    pytest.importorskip("h2", reason="httpx needs the h2 package for HTTP/2")
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(tls_gw.cafile)), timeout=CLIENT_TIMEOUT_S) as client:
        for _ in range(3):  # several requests on one connection
            r = client.get(f"{tls_gw.https}/")
            assert r.status_code == 200 and r.json() == {"ok": True}
            assert r.http_version == "HTTP/2"
        r = client.post(f"{tls_gw.https}/api/echo", content=b"x" * 100_000)
        assert r.status_code == 200 and r.content == b"x" * 100_000


# --- TLS versions -------------------------------------------------------------------------------


def tls_handshake(port: int, version: ssl.TLSVersion) -> str:
    """Handshake offering only `version` (and every cipher the local OpenSSL has); the negotiated version."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw) as tls:
            return tls.version()


def test_tls12_client_is_accepted(tls_gw):
    assert tls_handshake(tls_gw.tls_port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    r = curl("--tls-max", "1.2", "-v", "--cacert", str(tls_gw.cafile), f"{tls_gw.https}/")
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True}
    assert "SSL connection using TLSv1.2" in r.stderr


def test_tls13_client_is_accepted(tls_gw):
    assert tls_handshake(tls_gw.tls_port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ssl.TLSVersion.TLSv1_1 itself
def test_tls11_client_is_refused(tls_gw):
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        tls_handshake(tls_gw.tls_port, ssl.TLSVersion.TLSv1_1)
    reason = getattr(refused.value, "reason", None) or str(refused.value)
    if reason in ("NO_PROTOCOLS_AVAILABLE", "UNSUPPORTED_PROTOCOL", "NO_CIPHERS_AVAILABLE"):
        pytest.skip(f"the local OpenSSL cannot even offer TLS 1.1 ({reason}), so the server's refusal cannot be observed")
    # the server answered the TLS 1.1 ClientHello with an alert (Granian), or hung up (Hypercorn, Python's ssl)
    assert "ALERT" in reason or isinstance(refused.value, (ssl.SSLEOFError, ConnectionResetError)), refused.value


# --- h2c and h2load -----------------------------------------------------------------------------


def test_h2c_prior_knowledge_on_the_plain_listener(tls_gw):
    version, body = curl_version_and_body("--http2-prior-knowledge", f"{tls_gw.gw.url}/")
    assert version == "2" and json.loads(body) == {"ok": True}


def test_h2c_upgrade_on_the_plain_listener(tls_gw):
    """`Upgrade: h2c` (curl --http2 on http://): Hypercorn switches to HTTP/2, Granian answers in HTTP/1.1."""
    version, body = curl_version_and_body("--http2", f"{tls_gw.gw.url}/")
    assert json.loads(body) == {"ok": True}
    assert version == {"granian": "1.1", "hypercorn": "2"}[tls_gw.engine]


def h2load(url: str) -> str:
    if H2LOAD is None:
        pytest.skip("h2load is not installed (Debian package nghttp2-client)")
    r = subprocess.run([H2LOAD, "-n", "200", "-c", "4", "-m", "10", url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("scheme", ["https", "h2c"])
def test_h2load_completes_every_request(tls_gw, scheme):
    url = f"{tls_gw.https}/" if scheme == "https" else f"{tls_gw.gw.url}/"
    out = h2load(url)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    assert m, out
    total, started, done, succeeded, failed, errored, timeout = map(int, m.groups())
    assert (total, done, succeeded, failed, errored, timeout) == (200, 200, 200, 0, 0, 0), out
    assert re.search(r"status codes: 200 2xx", out), out
    if scheme == "https":
        assert "Application protocol: h2" in out, out


# --- key formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rsa1", "ec1"], ids=["rsa-pkcs1", "ec-sec1"])
def test_pkcs1_and_sec1_keys_are_served(gatewayd, upstream, certs, name):
    assert b"BEGIN RSA PRIVATE KEY" in (certs / "rsa1.key").read_bytes()
    assert b"BEGIN EC PRIVATE KEY" in (certs / "ec1.key").read_bytes()
    gw = start_tls_gateway(gatewayd, certs, upstream("a").url, cert=f"{name}.crt", key=f"{name}.key")
    for flag, expected in (("--http1.1", "1.1"), ("--http2", "2")):
        version, body = curl_version_and_body(flag, "--cacert", str(gw.cafile), f"{gw.https}/")
        assert version == expected and json.loads(body) == {"ok": True}


# --- the files at check and reload --------------------------------------------------------------


def run_check(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gatewayd", "check", str(path)], capture_output=True, text=True, cwd=cwd, timeout=60)


CHECK_CONFIG = """\
version: 1
server:
  tls:
    listen: ["127.0.0.1:8443"]
    cert: {cert}
    key: {key}
routes:
  - match: {{path: /}}
    respond: {{}}
"""


def test_check_takes_relative_paths_from_the_config_folder(tmp_path, certs):
    conf = tmp_path / "conf"
    (conf / "tls").mkdir(parents=True)
    for suffix in ("crt", "key"):
        shutil.copy(certs / f"gateway.{suffix}", conf / "tls" / f"gateway.{suffix}")
    path = conf / "gateway.yaml"
    path.write_text(CHECK_CONFIG.format(cert="tls/gateway.crt", key="tls/gateway.key"))
    r = run_check(path, cwd=tmp_path)  # not the config's folder
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "cert, key, line, message",
    [
        ("missing.crt", "gateway.key", 5, r"cannot read the TLS certificate .*missing\.crt: No such file or directory"),
        ("gateway.crt", "missing.key", 6, r"cannot read the TLS private key .*missing\.key: No such file or directory"),
        ("gateway.key", "gateway.key", 5, r".*gateway\.key holds no PEM certificate"),
        ("gateway.crt", "gateway.crt", 6, r".*gateway\.crt holds no PEM private key"),
        ("gateway.crt", "other.key", 6, r"the private key .*other\.key does not belong to the certificate .*gateway\.crt"),
    ],
    ids=["missing cert", "missing key", "cert is a key", "key is a cert", "key of another cert"],
)
def test_check_reports_unusable_tls_files_where_they_are_named(tmp_path, certs, cert, key, line, message):
    path = tmp_path / "gateway.yaml"
    path.write_text(CHECK_CONFIG.format(cert=certs / cert, key=certs / key))
    r = run_check(path, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert re.search(rf"gateway\.yaml:{line}:\d+: error: {message}", out), out


def test_reload_with_an_unreadable_key_keeps_serving(gatewayd, upstream, certs, tmp_path):
    """Certificate files are checked at every reload like the rest of the config; a reload that would
    break them is rejected, and the listeners keep the certificate they loaded at start."""
    gw = start_tls_gateway(gatewayd, certs, upstream("a").url)
    before = gw.gw.health()
    text = CONFIG.format(host=HOST, tls_port=gw.tls_port, cert=certs / "gateway.crt", key=tmp_path / "gone.key", a="http://127.0.0.1:9")
    gw.gw.write_config(text)
    deadline = time.monotonic() + 10
    while not (health := gw.gw.health())["last_reload_error"]:
        assert time.monotonic() < deadline, "the reload was not attempted"
        time.sleep(0.1)
    assert "cannot read the TLS private key" in health["last_reload_error"] and "gone.key" in health["last_reload_error"]
    assert health["generation"] == before["generation"]
    version, body = curl_version_and_body("--http2", "--cacert", str(gw.cafile), f"{gw.https}/")
    assert version == "2" and json.loads(body) == {"ok": True}


HTTPS_UPSTREAM = """
version: 1
upstreams:
  secure: {{targets: ["https://{host}:{port}"], retries: {{attempts: 1}}}}
routes:
  - match: {{path_prefix: /}}
    upstream: secure
"""


def test_an_https_upstream_is_verified(gatewayd, upstream, certs, monkeypatch):
    """A gateway proxies to an `https://` target (here another gateway's TLS listener) over verified
    TLS: with the target's CA among those it trusts (`SSL_CERT_FILE`), requests and their bodies go
    through; without, the certificate is refused and the answer is 502."""
    back = start_tls_gateway(gatewayd, certs, upstream("a").url)
    monkeypatch.setenv("SSL_CERT_FILE", str(back.cafile))
    trusting = gatewayd(HTTPS_UPSTREAM.format(host=HOST, port=back.tls_port))
    monkeypatch.delenv("SSL_CERT_FILE")
    distrusting = gatewayd(HTTPS_UPSTREAM.format(host=HOST, port=back.tls_port))
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        r = client.get(f"{trusting.url}/")
        assert r.status_code == 200 and r.json() == {"ok": True}, r.text
        echoed = client.post(f"{trusting.url}/api/echo", content=b"x" * 100_000)
        assert echoed.status_code == 200 and echoed.content == b"x" * 100_000
        refused = client.get(f"{distrusting.url}/")
        assert refused.status_code == 502 and refused.json()["error"] == "upstream_unavailable", refused.text
    assert "certificate verify failed" in distrusting.log()
