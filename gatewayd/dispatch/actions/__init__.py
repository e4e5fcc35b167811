"""Route actions: each compiles its spec into one async callable `action(exchange)` over precomputed data."""
