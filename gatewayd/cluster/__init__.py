"""Several gateways behind one load balancer, sharing state through Redis (the `cluster` section).

`member.Cluster` is what a gateway process holds: one connection to Redis (`link.py`) and what
goes through it: rate-limit leases (`buckets.py`), QUIC session tickets (`tickets.py`) and latency
sketches (`sketches.py`). Redis is the engine users already run for this; no protocol of our own.
"""

from .link import RedisLink, Unavailable
from .member import Cluster, instance_name, same_redis

__all__ = ["Cluster", "RedisLink", "Unavailable", "instance_name", "same_redis"]
