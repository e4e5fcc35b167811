"""The validated config as typed, immutable values with defaults applied and units parsed.

Built only from data the schema accepted, so lookups here cannot fail on shape; what remains to
check (references between sections, routing conflicts) is done by `semantic.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import units
from .source import Marks


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Listen":
        host, _, port = text.rpartition(":")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class QuicConfig:
    """HTTP/3 listeners (UDP), with the certificate and key of `server.tls`."""

    listen: tuple[Listen, ...]
    early_data: str  # "off" | "safe_methods"
    alt_svc_max_age: float  # seconds


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """HTTPS listeners. `cert` and `key` are absolute paths (relative ones are taken from the config
    file's folder); `semantic.py` checks that they can be read and belong together."""

    listen: tuple[Listen, ...]
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class Limits:
    """What a client may send, and how slowly. Sizes in bytes, durations in seconds."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 10 * 1024 * 1024
    header_read_timeout: float = 30.0
    keep_alive_timeout: float = 75.0
    max_concurrent_streams: int = 100

    @property
    def engine_header_bytes(self) -> int:
        """The engines' own header limit: 8 KiB above `max_header_bytes`, which the app enforces exactly,
        for the request line (HTTP/1.1) or pseudo-headers and HPACK's 32 bytes a field (HTTP/2)."""
        return self.max_header_bytes + 8 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[Listen, ...]
    engine: str
    http: str
    tls: TLSConfig | None = None
    tcp_fastopen: bool = False
    limits: Limits = Limits()
    quic: QuicConfig | None = None
    workers: int | None = None  # None: `auto`, one per CPU core the process may run on
    cpu_pinning: bool = False
    shutdown_timeout: float = 10.0  # seconds
    trusted_proxies: tuple[str, ...] = ()  # addresses or CIDR networks whose X-Forwarded-For is believed
    encoded_slash: str = "reject"  # server.paths.encoded_slash: "reject" | "keep" | "decode" (gatewayd.routing.normalize)


@dataclass(frozen=True, slots=True)
class OtelConfig:
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # an OTLP/HTTP traces endpoint
    service_name: str = "gatewayd"
    sample: float = 1.0  # fraction of traces exported


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    server_timing: bool
    server_timing_detailed: bool  # one entry per stage besides `total`
    health_path: str | None
    latency_path: str | None = "/latency"
    metrics_path: str | None = "/metrics"
    endpoints_access: str = "public"  # "public" | "local" (loopback clients only), for latency and metrics
    access_log_to: str = "off"  # "off" | "stdout" | "stderr" | a file path (made absolute)
    access_log_sample: float = 1.0
    otel: OtelConfig | None = None  # OpenTelemetry span export; None when off
    record: bool = True  # False: tables record nothing (no latency, counters, access log or spans)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """`cluster`: the Redis that several gateways share (gatewayd/cluster/), read at start."""

    url: str  # redis://, rediss:// or unix://; with mode "sentinel", its host is the master's service name
    timeout: float = 0.05  # seconds: the longest wait for one answer from Redis
    pool: int = 16  # connections per worker process
    mode: str = "single"  # "single" | "cluster" (Redis Cluster) | "sentinel" (a master found through Redis Sentinel)
    sentinels: tuple[str, ...] = ()  # with mode "sentinel": the sentinels' host[:port] addresses
    on_error: str = "fail_open"  # what rate limits do without Redis, unless a policy says: "fail_open" | "fail_closed"


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Passive ejection (gatewayd/upstream/breaker.py): a target that fails `consecutive_failures`
    requests in a row (0: never) is out of rotation for `ejection_time` seconds."""

    consecutive_failures: int = 5
    ejection_time: float = 10.0


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Active checks (gatewayd/upstream/health.py, probe.py): `GET path` to each target every
    `interval` seconds, passing on 2xx or 3xx within `timeout`; thresholds in checks in a row."""

    path: str
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 2


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """`attempts` tries at most (1: no retries), within `budget` (a fraction of requests); each try
    waits `per_try_timeout` seconds at most for its response (None: what is left of the response timeout)."""

    attempts: int = 2
    budget: float = 0.2
    per_try_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    targets: tuple[str, ...]
    balance: str
    connect_timeout: float
    response_timeout: float  # from the request's end (body included) to the response headers, all tries together
    max_connections: int
    read_timeout: float = 60.0  # the longest silence while a response body is being received
    outlier: OutlierConfig = OutlierConfig()
    health: HealthCheckConfig | None = None  # None: no active checks
    slow_start: float = 0.0  # seconds
    retries: RetryConfig = RetryConfig()


@dataclass(frozen=True, slots=True)
class RouteConfig:
    index: int
    name: str
    match: dict
    policies: tuple[str, ...]
    action: str  # "respond" | "redirect" | "upstream"
    spec: object  # the action's own mapping (or the upstream name)
    rewrite: dict


@dataclass(frozen=True)
class CacheAdmin:
    listen: Listen
    key: str


@dataclass(frozen=True)
class CacheConfig:
    l1_max: int = 256 << 20
    l2_max: int = 1 << 30
    max_object: int = 8 << 20
    tag_header: str = "surrogate-key"
    admin: CacheAdmin | None = None


@dataclass(frozen=True)
class Config:
    file: str
    sha256: str
    server: ServerConfig
    observability: ObservabilityConfig
    upstreams: dict[str, UpstreamConfig]
    policies: dict[str, dict]
    routes: tuple[RouteConfig, ...]
    marks: Marks = field(repr=False, compare=False)
    cache: CacheConfig = CacheConfig()
    secret_paths: frozenset = field(repr=False, compare=False, default=frozenset())
    cluster: ClusterConfig | None = None  # None: the gateway stands alone


ACTIONS = ("respond", "redirect", "upstream")


def _quic(server: dict) -> QuicConfig | None:
    quic = server.get("quic")
    if quic is None:
        return None
    return QuicConfig(
        listen=tuple(Listen.parse(s) for s in quic.get("listen", server["tls"]["listen"])),  # `quic` requires `tls`
        early_data="off" if quic.get("early_data") is False else quic.get("early_data", "safe_methods"),
        alt_svc_max_age=units.seconds(quic.get("alt_svc_max_age", "24h")),
    )


def _cluster(cluster: dict | None) -> ClusterConfig | None:
    if cluster is None:
        return None
    redis = cluster["redis"]
    return ClusterConfig(
        url=redis["url"],
        timeout=units.seconds(redis.get("timeout", "50ms")),
        pool=redis.get("pool", 16),
        mode=redis.get("mode", "single"),
        sentinels=tuple(redis.get("sentinels", ())),
        on_error=cluster.get("on_error", "fail_open"),
    )


def _log_target(access_log: dict | None, file: str) -> str:
    """`off` without an `access_log` section; a relative file path is taken from the working directory."""
    if access_log is None:
        return "off"
    to = access_log.get("to", "stdout")
    if to in ("off", "stdout", "stderr"):
        return to
    return os.path.abspath(os.path.expanduser(to))


def _otel(otel: dict | None) -> OtelConfig | None:
    """None (export off) without an `otel` section."""
    if otel is None:
        return None
    defaults = OtelConfig()
    return OtelConfig(
        endpoint=otel.get("endpoint", defaults.endpoint),
        service_name=otel.get("service_name", defaults.service_name),
        sample=float(otel.get("sample", defaults.sample)),
    )


def _relative_to(file: str, path: str) -> str:
    """`path` as an absolute path; a relative one is taken from the folder of the config `file`."""
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(file)), os.path.expanduser(path)))


def _tls(server: dict, file: str) -> TLSConfig | None:
    tls = server.get("tls")
    if tls is None:
        return None
    return TLSConfig(
        listen=tuple(Listen.parse(s) for s in tls["listen"]),
        cert=_relative_to(file, tls["cert"]),
        key=_relative_to(file, tls["key"]),
    )


def _limits(server: dict) -> Limits:
    limits = server.get("limits", {})
    return Limits(
        max_header_bytes=units.size(limits.get("max_header_bytes", "16KiB")),
        max_body_bytes=units.size(limits.get("max_body_bytes", "10MiB")),
        header_read_timeout=units.seconds(limits.get("header_read_timeout", "30s")),
        keep_alive_timeout=units.seconds(limits.get("keep_alive_timeout", "75s")),
        max_concurrent_streams=limits.get("max_concurrent_streams", 100),
    )


def _upstream(name: str, u: dict) -> UpstreamConfig:
    timeouts = u.get("timeouts", {})
    outlier, retries, health = u.get("outlier", {}), u.get("retries", {}), u.get("health")
    per_try = retries.get("per_try_timeout")
    return UpstreamConfig(
        name=name,
        targets=tuple(u["targets"]),
        balance=u.get("balance", "round_robin"),
        connect_timeout=units.seconds(timeouts.get("connect", "1s")),
        response_timeout=units.seconds(timeouts.get("response", "30s")),
        read_timeout=units.seconds(timeouts.get("read", "60s")),
        max_connections=u.get("max_connections", 100),
        outlier=OutlierConfig(
            consecutive_failures=outlier.get("consecutive_failures", 5),
            ejection_time=units.seconds(outlier.get("ejection_time", "10s")),
        ),
        health=None if health is None else HealthCheckConfig(
            path=health["path"],
            interval=units.seconds(health.get("interval", "5s")),
            timeout=units.seconds(health.get("timeout", "1s")),
            healthy_threshold=health.get("healthy_threshold", 1),
            unhealthy_threshold=health.get("unhealthy_threshold", 2),
        ),
        slow_start=units.seconds(u.get("slow_start", "0s")),
        retries=RetryConfig(
            attempts=retries.get("attempts", 2),
            budget=float(retries.get("budget", 0.2)),
            per_try_timeout=None if per_try is None else units.seconds(per_try),
        ),
    )  # fmt: skip


def _cache(cache: dict) -> CacheConfig:
    defaults = CacheConfig()
    admin = cache.get("admin")
    return CacheConfig(
        l1_max=units.size(cache["l1_max"]) if "l1_max" in cache else defaults.l1_max,
        l2_max=units.size(cache["l2_max"]) if "l2_max" in cache else defaults.l2_max,
        max_object=units.size(cache["max_object"]) if "max_object" in cache else defaults.max_object,
        tag_header=cache.get("tag_header", defaults.tag_header).lower(),
        admin=None if admin is None else CacheAdmin(Listen.parse(admin["listen"]), admin["key"]),
    )


def build(data: dict, file: str, sha256: str, marks: Marks, secret_paths: frozenset, skip_routes=frozenset()) -> Config:
    """`skip_routes`: indexes of routes to leave out (they failed the schema; see salvage.py)."""
    server = data.get("server", {})
    obs = data.get("observability", {})
    endpoints = obs.get("endpoints", {})
    upstreams = {name: _upstream(name, u) for name, u in data.get("upstreams", {}).items()}
    routes = []
    for i, r in enumerate(data["routes"]):
        if i in skip_routes:
            continue
        action = next(a for a in ACTIONS if a in r)
        match = r["match"]
        default_name = f"{'|'.join(match.get('methods', ['*']))} {match.get('path') or match.get('path_prefix') or match.get('path_regex')}"
        routes.append(
            RouteConfig(
                index=i,
                name=r.get("name", default_name),
                match=match,
                policies=tuple(r.get("policies", ())),
                action=action,
                spec=r[action],
                rewrite=r.get("rewrite", {}),
            )
        )
    return Config(
        file=file,
        sha256=sha256,
        server=ServerConfig(
            listen=tuple(Listen.parse(s) for s in server.get("listen", ["127.0.0.1:8080"])),
            engine=server.get("engine", "granian"),
            http=server.get("http", "auto"),
            tls=_tls(server, file),
            tcp_fastopen=server.get("tcp_fastopen", False),
            limits=_limits(server),
            quic=_quic(server),
            workers=None if server.get("workers", "auto") == "auto" else server["workers"],
            cpu_pinning=server.get("cpu_pinning", False),
            shutdown_timeout=units.seconds(server.get("shutdown_timeout", "10s")),
            trusted_proxies=tuple(server.get("trusted_proxies", ())),
            encoded_slash=server.get("paths", {}).get("encoded_slash", "reject"),
        ),
        observability=ObservabilityConfig(
            server_timing=bool(obs.get("server_timing", True)),
            server_timing_detailed=obs.get("server_timing") == "detailed",
            health_path=endpoints.get("health", "/health"),
            latency_path=endpoints.get("latency", "/latency"),
            metrics_path=endpoints.get("metrics", "/metrics"),
            endpoints_access=obs.get("endpoints_access", "public"),
            access_log_to=_log_target(obs.get("access_log"), file),
            access_log_sample=float(obs.get("access_log", {}).get("sample", 1)),
            otel=_otel(obs.get("otel")),
            record=obs.get("record", True),
        ),
        upstreams=upstreams,
        policies=data.get("policies", {}),
        routes=tuple(routes),
        marks=marks,
        secret_paths=secret_paths,
        cache=_cache(data.get("cache", {})),
        cluster=_cluster(data.get("cluster")),
    )
