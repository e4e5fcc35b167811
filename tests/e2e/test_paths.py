"""One path, routed and forwarded: request targets from published route-confusion and path-traversal
CVEs of gateways and proxies, sent on raw sockets to both engines.

Each vector either gets 400, or is routed by its normalized path and reaches the upstream with
exactly that path (after the route's `strip_prefix`): never routed as one path and forwarded as
another. The routes: `/admin` is answered by the gateway itself (403, standing for a guarded
route), `/api` is forwarded with `/api` stripped, everything else is forwarded as is. `gatewayd
explain` must give the same answer as the server, vector by vector.
"""

from __future__ import annotations

import contextlib
import io
import json
import types

import pytest
from conftest import HOST
from rawhttp import Recorder, exchange

from gatewayd.cli import commands
from gatewayd.routing.normalize import PathRefused, compile_normalizer, normalize_pattern

CONFIG = """
version: 1
server:
  paths: {{encoded_slash: {mode}}}
upstreams:
  rec: {{targets: ["{rec}"]}}
routes:
  - name: admin
    match: {{path_prefix: /admin}}
    respond: {{status: 403, json: {{route: admin}}}}
  - name: api
    match: {{path_prefix: /api}}
    upstream: rec
    rewrite: {{strip_prefix: /api}}
  - name: public
    match: {{path_prefix: /}}
    upstream: rec
"""

REFUSED = ("400",)
ADMIN = ("admin",)


def up(route: str, forwarded: str) -> tuple[str, str]:
    """Routed to `route` (api or public) and received upstream as `forwarded`."""
    return (route, forwarded)


# (request target as sent, expected answer, source)
VECTORS = [
    (b"/public/../admin", REFUSED, "Envoy CVE-2019-9901: /info/../private passes a prefix rule"),
    (b"/public/./admin", REFUSED, "Envoy CVE-2019-9901 (a . segment)"),
    (b"/public/..", REFUSED, "Envoy CVE-2019-9901 (trailing ..)"),
    (b"/admin/..", REFUSED, "Envoy CVE-2019-9901 (.. out of a guarded prefix)"),
    (b"/public/%2e%2e/admin", REFUSED, "Apache httpd CVE-2021-41773 (%2e dot segments)"),
    (b"/public/.%2e/admin", REFUSED, "Apache httpd CVE-2021-41773 (.%2e)"),
    (b"/cgi-bin/.%2e/.%2e/.%2e/etc/passwd", REFUSED, "Apache httpd CVE-2021-41773, published PoC"),
    (b"/public/%2E%2E/admin", REFUSED, "Apache httpd CVE-2021-41773 (upper-case escapes)"),
    (b"/cgi-bin/%%32%65%%32%65/%%32%65%%32%65/etc/passwd", REFUSED, "Apache httpd CVE-2021-42013, published PoC"),
    (b"/public/%252e%252e/admin", up("public", "/public/%252e%252e/admin"), "Apache httpd CVE-2021-42013 (decoded once only)"),
    (b"/public%2F..%2Fadmin", REFUSED, "Envoy CVE-2021-29492 (escaped slashes)"),
    (b"/public%2fadmin", REFUSED, "Envoy CVE-2021-29492 (lower-case %2f)"),
    (b"/%2fadmin", REFUSED, "Istio CVE-2021-31920 (escaped slash)"),
    (b"/public%5C..%5Cadmin", REFUSED, "Istio CVE-2021-31920 (escaped backslash)"),
    (b"/public\\..\\admin", REFUSED, "Istio CVE-2021-31920 (backslash); Spring CVE-2018-1271"),
    (b"//admin", ADMIN, "Istio CVE-2021-31920: //admin passed a rule for /admin"),
    (b"///admin/secret", ADMIN, "APISIX CVE-2021-43557 (repeated slashes)"),
    (b"//internal/", up("public", "/internal/"), "APISIX CVE-2021-43557, published example"),
    (b"/public//..//admin", REFUSED, "Istio CVE-2021-31920 with Envoy CVE-2019-9901"),
    (b"/public/..%2fadmin", REFUSED, "Istio CVE-2021-31920 (..%2f)"),
    (b"/public/..%5cadmin", REFUSED, "Istio CVE-2021-31920 (..%5c)"),
    (b"/public/%2e%2e%2fadmin", REFUSED, "Envoy CVE-2021-29492 (%2e%2e%2f)"),
    (b"/public/..;/admin", REFUSED, "F5 BIG-IP CVE-2020-5902 (..; read as .. by Tomcat)"),
    (b"/tmui/login.jsp/..;/tmui/locallb/workspace/fileRead.jsp", REFUSED, "F5 BIG-IP CVE-2020-5902, published PoC"),
    (b"/xxx/..;/admin/", REFUSED, "Apache Shiro CVE-2020-1957, published PoC"),
    (b"/public/.;x/admin", REFUSED, "Apache Shiro CVE-2020-1957 (.;)"),
    (b"/vpn/../vpns/cfg/smb.conf", REFUSED, "Citrix ADC CVE-2019-19781, published PoC"),
    (b"/dana-na/../dana/html5acc/guacamole/../../../../../../etc/passwd", REFUSED, "Pulse Connect Secure CVE-2019-11510"),
    (b"/public/%00/admin", REFUSED, "Envoy CVE-2019-9900 (NUL)"),
    (b"/.%00/WEB-INF/web.xml", REFUSED, "Jetty CVE-2021-34429 (.%00)"),
    (b"/%u002e/WEB-INF/web.xml", REFUSED, "Jetty CVE-2021-34429 (%u002e)"),
    (b"/%2e/WEB-INF/web.xml", REFUSED, "Jetty CVE-2021-28164 (%2e segment)"),
    (b"/admin/%0a", REFUSED, "Spring Security CVE-2022-22978 (%0a past a regex matcher)"),
    (b"/public/%0d%0aX-Injected:%201", REFUSED, "Apache httpd CVE-2023-25690 (request splitting)"),
    (b"/public/x#/../../admin", up("public", "/public/x"), "Istio CVE-2021-39156 (fragment in the path)"),
    (b"/admin#/../public", ADMIN, "Istio CVE-2021-39156; HAProxy CVE-2023-45539 (# in the path)"),
    (b"/public#x", up("public", "/public"), "HAProxy CVE-2023-45539"),
    (b"/api../admin", up("public", "/api../admin"), "Traefik CVE-2026-48020 (/api../ and StripPrefix)"),
    (b"/api%2e%2e/admin", up("public", "/api../admin"), "Traefik CVE-2026-48020 (/api%2e%2e/)"),
    (b"/api/%2e%2e/admin", REFUSED, "Traefik CVE-2026-48020 (after the prefix)"),
    (b"/api%2e/admin/secret", up("public", "/api./admin/secret"), "Traefik CVE-2026-40912 (StripPrefixRegex)"),
    (b"/api/./admin/secret", REFUSED, "Traefik CVE-2026-40912 (/./ left after stripping)"),
    (b"/api/items%2F..%2F..%2Fadmin", REFUSED, "Traefik CVE-2025-66490 (encoded reserved characters)"),
    (b"@127.0.0.1/admin", REFUSED, "Apache httpd CVE-2011-3368 (target without a leading /)"),
    (b":@127.0.0.1/admin", REFUSED, "Apache httpd CVE-2011-4317"),
    (b"/public/%c0%ae%c0%ae/admin", up("public", "/public/%C0%AE%C0%AE/admin"), "Tomcat CVE-2008-2938 (overlong UTF-8 dots, kept encoded)"),
    (b"/%61dmin/x", ADMIN, "CWE-647 (%6Dypage: an encoded letter past a path rule)"),
    (b"/admin/%20", ADMIN, "Apache Shiro CVE-2020-17523 (/admin/%20)"),
    (b"/remote/fgt_lang?lang=/../../../..//////////dev/cmdb/sslvpn_websession",
     up("public", "/remote/fgt_lang?lang=/../../../..//////////dev/cmdb/sslvpn_websession"),
     "Fortinet CVE-2018-13379 (traversal in the query: the query is forwarded as sent)"),
    (b"/api/x%3F/../../admin", REFUSED, "Apache httpd CVE-2024-38474 (%3F then dot segments)"),
]
BASELINE = [  # ordinary paths, for contrast
    (b"/api/items/42", up("api", "/items/42"), "baseline"),
    (b"/caf%c3%a9?q=1", up("public", "/caf%C3%A9?q=1"), "baseline: escapes in upper case"),
    (b"/p\xc3\xa9", REFUSED, "RFC 3986: non-ASCII bytes must be percent-encoded"),
    (b"/a b", REFUSED, "RFC 9112 section 3: a space ends the target (both engines refuse)"),
    (b"/public?a=<>", REFUSED, "a query character Granian's HTTP library refuses (RFC 3986 section 3.4)"),
    (b"/public?a=\xc3\xa9", REFUSED, "a non-ASCII byte in the query"),
    (b"/public?a=[]{}|", up("public", "/public?a=[]{}|"), "baseline: what clients send unencoded, accepted"),
    (b"/public?q=1#frag", up("public", "/public?q=1"), "baseline: a fragment after the query is dropped"),
]
ALL = VECTORS + BASELINE


def test_there_are_at_least_40_cited_vectors():
    assert len(VECTORS) >= 40 and all(source and source != "baseline" for _, _, source in VECTORS)


@pytest.fixture(scope="module")
def rec():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture(scope="module")
def gw(gatewayd_module, rec):
    return gatewayd_module(CONFIG.format(mode="reject", rec=rec.url))


@pytest.mark.parametrize("target, expected, source", ALL, ids=[v[0].decode("latin-1") for v in ALL])
def test_a_path_is_routed_and_forwarded_as_one(gw, rec, target, expected, source):
    before = len(rec.seen)
    got = exchange(gw.port, b"GET " + target + f" HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    assert got.responses, (source, got.raw[:300])
    response = got.responses[0]
    new = rec.targets()[before:]
    if expected == REFUSED:
        assert response.status == 400, (source, response)
        if response.body or gw.engine != "granian":  # Granian's own 400 (a target its parser refuses) has no body
            assert response.json()["error"] in ("bad_path", "bad_request"), source
        assert new == [], source
    elif expected == ADMIN:
        assert response.status == 403 and response.json() == {"route": "admin"}, (source, response)
        assert new == [], source
    else:
        assert response.status == 200, (source, response)
        assert new == [expected[1]], source


def _explain(config_path, target: str) -> dict:
    args = types.SimpleNamespace(file=str(config_path), method="GET", target=target, header=[f"Host: {HOST}"], format="json")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        commands.explain(args)
    return json.loads(out.getvalue())


@pytest.mark.parametrize("target, expected, source", ALL, ids=[v[0].decode("latin-1") for v in ALL])
def test_explain_gives_the_servers_answer(tmp_path, target, expected, source):
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(mode="reject", rec="http://127.0.0.1:9"))
    answer = _explain(config, target.decode("utf-8"))
    if expected == REFUSED:
        assert answer["result"] == 400, (source, answer)
    else:
        assert answer["result"] == "match" and answer["route"]["name"] == expected[0], (source, answer)


# --- the encoded_slash policy -----------------------------------------------------------------

SLASHES = {
    # target: (reject, keep, decode)
    b"/api/a%2Fb": (REFUSED, up("api", "/a%2Fb"), up("api", "/a/b")),
    b"/api%2Fx": (REFUSED, up("public", "/api%2Fx"), up("api", "/x")),
    b"/public%2F..%2Fadmin": (REFUSED, REFUSED, REFUSED),
    b"/public%2f%2fadmin": (REFUSED, up("public", "/public%2F%2Fadmin"), up("public", "/public/admin")),
    b"/%2fadmin": (REFUSED, up("public", "/%2Fadmin"), ADMIN),
    b"/strip%2F@127.0.0.2:1/x": (REFUSED, up("public", "/strip%2F@127.0.0.2:1/x"), up("public", "/strip/@127.0.0.2:1/x")),
    b"/api/a%5Cb": (REFUSED, up("api", "/a%5Cb"), REFUSED),
}


@pytest.mark.parametrize("mode", ["keep", "decode"])
def test_encoded_slash_policy(gatewayd_module, rec, mode):
    gw = gatewayd_module(CONFIG.format(mode=mode, rec=rec.url))
    column = ("reject", "keep", "decode").index(mode)
    for target, answers in SLASHES.items():
        expected = answers[column]
        before = len(rec.seen)
        got = exchange(gw.port, b"GET " + target + f" HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        new = rec.targets()[before:]
        status = got.status
        if expected == REFUSED:
            assert status == 400 and new == [], (mode, target, got.raw[:200])
        elif expected == ADMIN:
            assert status == 403 and new == [], (mode, target, got.raw[:200])
        else:
            assert status == 200 and new == [expected[1]], (mode, target, new)


# --- the normalizer itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, reject, keep, decode",
    [
        (b"/a/b", "/a/b", "/a/b", "/a/b"),
        (b"/%41%7e%2D", "/A~-", "/A~-", "/A~-"),
        (b"/a%2fb", None, "/a%2Fb", "/a/b"),
        (b"/a%2F%2E%2E%2Fb", None, None, None),
        (b"/a%5c", None, "/a%5C", None),
        (b"/a%e9", "/a%E9", "/a%E9", "/a%E9"),
        (b"/a%", None, None, None),
        (b"/a%4", None, None, None),
        (b"/a%7F", None, None, None),
        (b"/a/.well-known/x", "/a/.well-known/x", "/a/.well-known/x", "/a/.well-known/x"),
        (b"/a/..b/c.", "/a/..b/c.", "/a/..b/c.", "/a/..b/c."),
        (b"/a;b/c", "/a;b/c", "/a;b/c", "/a;b/c"),
        (b"/a/.;b", None, None, None),
        (b"*", None, None, None),
        (b"", None, None, None),
    ],
)
def test_normalize(raw, reject, keep, decode):
    for mode, want in (("reject", reject), ("keep", keep), ("decode", decode)):
        normalize = compile_normalizer(mode)
        if want is None:
            with pytest.raises(PathRefused):
                normalize(raw)
        else:
            assert normalize(raw) == want.encode(), mode
            assert normalize(want.encode()) == want.encode(), f"{mode}: normalizing twice changes {want}"


def test_route_paths_are_matched_in_normal_form():
    assert normalize_pattern("/café/{id}/x y") == "/caf%C3%A9/{id}/x%20y"
    assert normalize_pattern("/caf%c3%a9") == "/caf%C3%A9"
    assert normalize_pattern("/100%") == "/100%25"
    assert normalize_pattern("/%7Euser") == "/~user"
