"""State shared by the worker processes of one host, behind one small interface.

Users of the store (0-RTT session tickets, latency histograms; later rate-limit budgets and the
cache's shared tier) see only `HostStore`. The host-wide implementation is chosen by measurement
(see `bench/store.py`). What several gateways share goes through Redis instead (`gatewayd/cluster/`):
the rate limits' buckets, QUIC session tickets and latency sketches.
"""

from .base import HostStore, StoreFull
from .host import open_host_store
from .lmdb_store import LMDBStore
from .memory import MemoryStore

__all__ = ["HostStore", "LMDBStore", "MemoryStore", "StoreFull", "open_host_store"]
