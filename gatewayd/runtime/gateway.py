"""The live gateway of one process: its config file, current table, upstream pools and status.

Reload follows one rule: build and validate the whole new config off the request path, then swap
the table reference in one assignment; on any failure keep serving the old table and record the
located error for the log and `/health`. In-flight requests finish on the table they started with;
upstreams whose settings did not change keep their pooled connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

from ..config.errors import ConfigError
from ..config.load import load_bytes, read
from ..cluster import Cluster, instance_name, same_redis
from ..config.model import Config
from ..dispatch.compile import compile_table
from ..dispatch.table import Table
from ..observe import Observer
from ..store import HostStore, MemoryStore
from ..upstream.pool import Pool, Upstream, UpstreamRegistry
from .kept import Kept
from .status import RuntimeStatus

log = logging.getLogger("gatewayd")

class Gateway:
    def __init__(self, path: str, store: HostStore | None = None, state_dir: str | None = None):
        self.path = path
        self.store = store if store is not None else MemoryStore()  # shared with the host's other workers
        # the bytes of the last config that loaded, so a worker restarted while the file is broken
        # comes back on the config its siblings still serve (only when a supervisor gave a folder)
        self.last_good = os.path.join(state_dir, "last-good-config") if state_dir else None
        self.state_dir = state_dir
        self._rejected_sha: str | None = None
        self.status = RuntimeStatus()
        self.observer = Observer(self.store, self.status)  # latency, metrics, access log
        self.registry = UpstreamRegistry()
        self.kept = Kept()  # policy state (rate-limit budgets, verified tokens) kept across reloads
        self.config: Config | None = None
        self.table: Table | None = None
        self.cluster: Cluster | None = None  # made from the first config's `cluster` section
        self._lock = asyncio.Lock()

    def _build(self, raw: bytes) -> tuple[Config, Table, dict[str, Upstream], list[Pool]]:
        config = load_bytes(raw, self.path)
        if self.table is None:  # the first config: `cluster` is read at start
            if config.cluster is not None:
                self.cluster = self.status.cluster = Cluster(config.cluster, self.observer, instance_name(self.state_dir is not None))
        elif not same_redis(self.cluster and self.cluster.config, config.cluster):
            log.warning("the cluster section changed: its redis settings take effect at the next start")
        live, retired = self.registry.resolve(config.upstreams)
        kept = self.kept.generation()
        table = compile_table(config, live, self.status, self.observer, self.store, kept, self.state_dir, self.cluster)
        table.kept = kept
        return config, table, live, retired

    def start(self) -> Config:
        """The first load: a bad file raises ConfigError (the caller exits 1), unless a last good
        config of this host exists: then the gateway starts on it and reports the error in /health."""
        try:
            raw = read(self.path)
            config, table, live, _ = self._build(raw)
        except ConfigError as exc:
            if self.last_good is None or not os.path.exists(self.last_good):
                raise
            log.error("%s\nstarting on the last config that loaded on this host", exc)
            raw = read(self.last_good)
            config, table, live, _ = self._build(raw)
            self._swap(config, table, live, raw)
            self.status.failed(str(exc))
            return config
        self._swap(config, table, live, raw)
        return config

    async def reload(self, reason: str, force: bool = False) -> bool:
        """Re-read the file; swap in the new config if it is valid and changed. True when swapped.

        A file already rejected is not tried again until its bytes change, unless `force` (SIGHUP:
        a file it refers to may have been fixed)."""
        async with self._lock:
            sha = None
            try:
                raw = read(self.path)
                sha = hashlib.sha256(raw).hexdigest()
                if sha == self.status.config_sha256:  # back to what is served: nothing is wrong any more
                    self._rejected_sha = self.status.last_reload_error = None
                    return False
                if sha == self._rejected_sha and not force:
                    return False
                config, table, live, retired = await asyncio.to_thread(self._build, raw)
            except Exception as exc:  # a ConfigError, or a bug: either way the old config keeps serving
                if not isinstance(exc, ConfigError):
                    log.exception("reload (%s) failed", reason)
                self._rejected_sha = sha
                self.status.failed(str(exc))
                self.observer.reload_failures += 1
                log.error("reload (%s) rejected, still serving generation %d:\n%s", reason, self.status.generation, exc)
                return False
            self._swap(config, table, live, raw)
            log.info("reload (%s): generation %d, config sha256 %s", reason, self.status.generation, config.sha256[:12])
            for pool in retired:
                pool.retire()  # closed now, or by the release of its last request
            return True

    def _swap(self, config: Config, table: Table, live: dict[str, Upstream], raw: bytes) -> None:
        self.table = table  # the one assignment that switches every new request to the new config
        self.config = config
        self.registry.commit(live)
        self.kept.commit(table.kept)
        self.status.loaded(config.sha256)
        self._rejected_sha = None
        self.observer.configure(config.observability)
        if self.last_good is not None:
            _write_atomically(self.last_good, raw)

    def run(self) -> None:
        """Called on the serving loop once it runs: start the background work of the loaded config
        (policy state, upstream health checks)."""
        if self.cluster is not None:
            self.cluster.start()  # before the policies', whose leases go through it
        self.kept.run()
        self.registry.run()

    async def close(self) -> None:
        self.kept.close()
        await self.observer.close()
        self.registry.close()
        if self.cluster is not None:
            await self.cluster.close()


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot keep a copy of the config in %s: %s", path, exc)
