"""The response cache: HTTP caching as a shared cache (RFC 9111), in two tiers, with coalescing.

Decisions are pure functions of a request's or response's fields and `now` (directives.py,
freshness.py, storable.py, conditional.py); state lives in the tiers (l1.py per worker, l2.py shared
by the host's workers) and the flights of requests in progress (flights.py); serve.py is the `cache`
policy's wrapper around a route's action, the one place that does I/O.
"""
