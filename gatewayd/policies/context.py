"""What a policy may use when it compiles, besides its own spec."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field

from ..config.model import CacheConfig
from ..runtime.kept import Generation
from ..store import HostStore, MemoryStore


@dataclass(frozen=True)
class CompileContext:
    store: HostStore = field(default_factory=MemoryStore)  # shared by the host's workers
    kept: Generation = field(default_factory=lambda: Generation({}))  # state kept across reloads
    base_dir: str = "."  # the config file's folder: relative file names in policies are taken from it
    trusted_proxies: tuple = ()  # ipaddress networks whose X-Forwarded-For is believed
    max_body_bytes: int = 10 * 1024 * 1024  # server.limits.max_body_bytes: no body the gateway reads is larger
    cache: CacheConfig = CacheConfig()  # the response cache's tiers
    state_dir: str | None = None  # the host's state folder, shared by its workers (None: serving alone)
    cluster: object = None  # this gateway's `gatewayd.cluster.Cluster` (Redis), or None when it stands alone
    on_error: str = "fail_open"  # `cluster.on_error`: what a policy does when Redis fails, unless it says

    def path(self, name: str) -> str:
        """A file named in a policy, as an absolute path."""
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(name)))

    def keep(self, name: str, kind: str, spec: object, make):
        """The kept state of policy `name`'s `kind`, the same object while its definition is unchanged."""
        return self.kept.get((name, kind, json.dumps(spec, sort_keys=True)), make)


def networks(entries) -> tuple:
    """`server.trusted_proxies` as ipaddress networks (an address is a network of one)."""
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)
