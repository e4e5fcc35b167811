"""Which store a worker gets: the host-wide one when the supervisor gave it a state folder, else its own."""

from __future__ import annotations

from .base import HostStore
from .lmdb_store import LMDBStore
from .memory import MemoryStore

DEFAULT_MAP_SIZE = 64 << 20  # a third holds entries: some 30,000 session tickets besides the latency histograms


def open_host_store(state_dir: str | None, *, map_size: int = DEFAULT_MAP_SIZE) -> HostStore:
    """The store shared by every worker whose `state_dir` is this folder; a private `MemoryStore` without one.

    `map_size` (bytes, the same in every worker) fixes the host-wide store's memory map; entries may
    fill a `HEADROOM`th of it, then `put` raises `StoreFull`. Each worker opens its own, once started.
    """
    if state_dir is None:
        return MemoryStore()
    return LMDBStore(state_dir, map_size=map_size)
