"""Benchmark scenarios: the same work declared once for gatewayd, once for nginx and,
optionally, once for Caddy.

A scenario is one ``Scenario(...)`` entry in ``SCENARIOS``. Placeholders, filled
in by the harness:

* ``@LISTEN@``        in the nginx snippet's ``server {}``: the harness's
                      ``listen`` directives (HTTP/1.1, HTTP/2 over TLS, h2c,
                      on free loopback ports) and the run's certificate
* ``@UPSTREAM_PORT@`` port of the shared upstream nginx (only when the
                      scenario declares ``upstream_nginx``)

``gatewayd`` is the YAML below the ``server:`` section (``upstreams:``,
``routes:``...); the harness writes ``version`` and ``server`` (listeners,
TLS, QUIC, workers). ``nginx`` is inserted verbatim into ``http {}`` and must
contain a ``server`` block with ``@LISTEN@``. ``upstream_nginx``, if set, runs
in a separate nginx process that both servers proxy to, so the upstream is
identical for both. ``caddy``, if set, holds Caddyfile directives doing the
same work inside a site block that the harness writes (HTTPS on one loopback
port with HTTP/1.1, HTTP/2 and HTTP/3); it adds the scenario's HTTP/3 run,
gatewayd against Caddy (nginx-light has no HTTP/3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str
    gatewayd: str
    nginx: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    upstream_nginx: str | None = None
    caddy: str | None = None  # Caddyfile directives: enables the HTTP/3 run against Caddy
    # Sanity check made against both servers before any load is sent.
    expect_status: int = 200
    expect_json: Any = None


# A separate nginx answering every request with a 13-byte JSON body.
UPSTREAM_13_BYTES = r"""
server {
    listen 127.0.0.1:@UPSTREAM_PORT@;
    location / {
        default_type application/json;
        return 200 '{"id": "42"}\n';
    }
}
"""

# The same answer, which shared caches may keep for an hour.
UPSTREAM_CACHEABLE = UPSTREAM_13_BYTES.replace(
    "default_type application/json;", 'default_type application/json;\n        add_header Cache-Control "public, max-age=3600";'
)


# The gateway work of an API in front of its consumers, the same for gatewayd and nginx: an API key
# looked up among known keys (401 otherwise), a rate limit per consumer set far above the load (so
# every request pays for the decision and none is refused) and, for browsers, CORS headers.
API_KEY = "bench-key-0001"
GATEWAY_POLICIES = f"""
policies:
  keyed:
    api_key: {{keys: [{{id: acme, key: {API_KEY}}}, {{id: globex, key: bench-key-0002}}]}}
    rate_limit: {{limit: 10000000, per: 1s, burst: 1000000, key: consumer}}
"""
NGINX_POLICIES = f"""
map $http_authorization $consumer {{
    "Bearer {API_KEY}" acme;
    "Bearer bench-key-0002" globex;
    default "";
}}
limit_req_zone $consumer zone=consumers:10m rate=10000000r/s;
"""
NGINX_KEYED = """
        if ($consumer = "") { return 401; }
        limit_req zone=consumers burst=1000000 nodelay;
"""


def nginx_proxy(check: str, extra: str = "") -> str:
    """nginx proxying /v1/items/{id} as gatewayd does, after `check` (directives that may refuse)."""
    return """
upstream items {
    server 127.0.0.1:@UPSTREAM_PORT@;
    keepalive 64;
}
server {
    @LISTEN@
    location ~ ^/v1/items/[^/]+$ {
@CHECK@
        proxy_pass http://items;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        # the request headers gatewayd adds on the way up
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header Via "1.1 nginx";
        proxy_set_header X-Request-Id $request_id;
        @EXTRA@
    }
}
""".replace("@CHECK@", check.rstrip("\n")).replace("@EXTRA@", extra)


SCENARIOS: list[Scenario] = [
    Scenario(
        name="static",
        description="GET /v1/health answered by the gateway itself: 200 with a small JSON body",
        path="/v1/health",
        gatewayd="""
routes:
  - {match: {path: /v1/health, methods: [GET]}, respond: {status: 200, json: {ok: true}}}
""",
        nginx="""
server {
    @LISTEN@
    location = /v1/health { default_type application/json; return 200 '{"ok":true}'; }
}
""",
        caddy="""
header Content-Type application/json
respond /v1/health `{"ok":true}` 200
""",
        expect_json={"ok": True},
    ),
    Scenario(
        name="proxy",
        description=(
            "GET /v1/items/42 with a required Authorization header, proxied over "
            "keep-alive to an upstream returning 13 bytes of JSON"
        ),
        path="/v1/items/42",
        headers={"Authorization": "Bearer k1"},
        upstream_nginx=UPSTREAM_13_BYTES,
        gatewayd="""
upstreams:
  items: {targets: ["http://127.0.0.1:@UPSTREAM_PORT@"]}
routes:
  - match: {path: "/v1/items/{id}", methods: [GET], headers: {authorization: "Bearer k1"}}
    upstream: items
""",
        nginx=nginx_proxy('        if ($http_authorization != "Bearer k1") { return 404; }'),
        expect_json={"id": "42"},
    ),
    Scenario(
        name="policies",
        description=(
            "GET /v1/health through an API key, a rate limit per consumer (far above the load) and CORS, "
            "answered by the gateway itself"
        ),
        path="/v1/health",
        headers={"Authorization": f"Bearer {API_KEY}", "Origin": "https://app.example.com"},
        gatewayd=GATEWAY_POLICIES + """
    cors: {origins: ["https://app.example.com"], headers: [Authorization]}
routes:
  - {match: {path: /v1/health, methods: [GET]}, policies: [keyed], respond: {status: 200, json: {ok: true}}}
""",
        nginx=NGINX_POLICIES + """
server {
    @LISTEN@
    location = /v1/health {
@KEYED@
        add_header Vary Origin always;
        if ($http_origin = "https://app.example.com") { add_header Access-Control-Allow-Origin $http_origin always; add_header Vary Origin always; }
        default_type application/json;
        return 200 '{"ok":true}';
    }
}
""".replace("@KEYED@", NGINX_KEYED),
        expect_json={"ok": True},
    ),
    Scenario(
        name="gateway-work",
        description=(
            "GET /v1/items/42 through an API key and a rate limit per consumer (far above the load), "
            "proxied over keep-alive to an upstream returning 13 bytes of JSON"
        ),
        path="/v1/items/42",
        headers={"Authorization": f"Bearer {API_KEY}"},
        upstream_nginx=UPSTREAM_13_BYTES,
        gatewayd=GATEWAY_POLICIES + """
upstreams:
  items: {targets: ["http://127.0.0.1:@UPSTREAM_PORT@"]}
routes:
  - {match: {path: "/v1/items/{id}", methods: [GET]}, policies: [keyed], upstream: items}
""",
        nginx=NGINX_POLICIES + nginx_proxy(NGINX_KEYED, "proxy_set_header X-Consumer-Id $consumer;"),
        expect_json={"id": "42"},
    ),
    Scenario(
        name="cache",
        description=(
            "GET /v1/items/42 through an API key and a rate limit per consumer (far above the load), "
            "answered from the response cache (the upstream's answer is public for an hour)"
        ),
        path="/v1/items/42",
        headers={"Authorization": f"Bearer {API_KEY}"},
        upstream_nginx=UPSTREAM_CACHEABLE,
        gatewayd=GATEWAY_POLICIES + """
  cached: {cache: {mode: standard}}
upstreams:
  items: {targets: ["http://127.0.0.1:@UPSTREAM_PORT@"]}
routes:
  - {match: {path: "/v1/items/{id}", methods: [GET]}, policies: [keyed, cached], upstream: items}
""",
        nginx=NGINX_POLICIES
        + "proxy_cache_path cache levels=1:2 keys_zone=items:10m max_size=256m inactive=60m use_temp_path=off;\n"
        + nginx_proxy(
            NGINX_KEYED,
            "proxy_set_header X-Consumer-Id $consumer;\n        proxy_cache items;\n"
            "        proxy_cache_lock on;\n        add_header Cache-Status $upstream_cache_status;",
        ),
        expect_json={"id": "42"},
    ),
]


def by_name() -> dict[str, Scenario]:
    names = [s.name for s in SCENARIOS]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate scenario names: {names}")
    return {s.name: s for s in SCENARIOS}


MARKERS = ("@LISTEN@", "@UPSTREAM_PORT@")


def fill(template: str, **values: int | str) -> str:
    """Replace ``@NAME@`` placeholders (a multi-line value keeps the placeholder's indentation);
    refuse to leave any unfilled."""
    text = template
    for key, value in values.items():
        marker = f"@{key.upper()}@"
        lines = []
        for line in text.splitlines(keepends=True):
            if marker in line:
                indent = line[: len(line) - len(line.lstrip())]
                line = line.replace(marker, str(value).replace("\n", "\n" + indent))
            lines.append(line)
        text = "".join(lines)
    for marker in MARKERS:
        if marker in text:
            raise ValueError(f"placeholder {marker} left unfilled (scenario needs it but it was not provided)")
    return text
