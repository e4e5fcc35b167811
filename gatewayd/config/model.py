"""The validated config as typed, immutable values with defaults applied and units parsed.

Built only from data the schema accepted, so lookups here cannot fail on shape; what remains to
check (references between sections, routing conflicts) is done by `semantic.py`.
"""

from __future__ import annotations

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
class ServerConfig:
    listen: tuple[Listen, ...]
    engine: str
    http: str


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    server_timing: bool
    health_path: str | None


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    targets: tuple[str, ...]
    balance: str
    connect_timeout: float
    response_timeout: float
    max_connections: int


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
class Config:
    file: str
    sha256: str
    server: ServerConfig
    observability: ObservabilityConfig
    upstreams: dict[str, UpstreamConfig]
    policies: dict[str, dict]
    routes: tuple[RouteConfig, ...]
    marks: Marks = field(repr=False, compare=False)
    secret_paths: frozenset = field(repr=False, compare=False, default=frozenset())


ACTIONS = ("respond", "redirect", "upstream")


def build(data: dict, file: str, sha256: str, marks: Marks, secret_paths: frozenset, skip_routes=frozenset()) -> Config:
    """`skip_routes`: indexes of routes to leave out (they failed the schema; see load._salvage)."""
    server = data.get("server", {})
    obs = data.get("observability", {})
    endpoints = obs.get("endpoints", {})
    upstreams = {}
    for name, u in data.get("upstreams", {}).items():
        timeouts = u.get("timeouts", {})
        upstreams[name] = UpstreamConfig(
            name=name,
            targets=tuple(u["targets"]),
            balance=u.get("balance", "round_robin"),
            connect_timeout=units.seconds(timeouts.get("connect", "1s")),
            response_timeout=units.seconds(timeouts.get("response", "30s")),
            max_connections=u.get("max_connections", 100),
        )
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
        ),
        observability=ObservabilityConfig(
            server_timing=obs.get("server_timing", True),
            health_path=endpoints.get("health", "/health"),
        ),
        upstreams=upstreams,
        policies=data.get("policies", {}),
        routes=tuple(routes),
        marks=marks,
        secret_paths=secret_paths,
    )
