"""The interface every store implements.

Calls are synchronous: they are made from places that cannot await (aioquic asks for a session
ticket in the middle of a TLS handshake), so an implementation must answer in microseconds.
Keys and values are bytes; a key's first path segment (`tickets/`, `latency/`) names its user.
"""

from __future__ import annotations

from typing import Protocol


class StoreFull(Exception):
    """`put` found no room for the entry, even after purging the expired ones; nothing was written."""


class HostStore(Protocol):
    def put(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        """Set `key`; with `ttl` (seconds) the entry disappears after that long.

        A store of fixed size raises `StoreFull` when the entry does not fit.
        """

    def get(self, key: bytes) -> bytes | None:
        """The live value of `key`, or None."""

    def take(self, key: bytes) -> bytes | None:
        """Get and delete `key` atomically: of several processes taking one key, one gets it."""

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every live (key, value) whose key starts with `prefix`, in key order."""

    def close(self) -> None:
        """Release the store's resources (the data stays for the other processes)."""
