"""TLS session tickets for QUIC, kept in the host store so that any worker of the host can resume.

aioquic hands every ticket it issues to `add` and asks `take` for the one a returning client names.
Tickets are single-use: `take` removes the entry (atomically, among all the host's workers), so a
replayed first flight (ClientHello and 0-RTT packets) finds no ticket, gets a full handshake, and its
early data is never decrypted (RFC 8446 section 8.1). Each ticket lives in the store as long as its
lifetime; the store bounds the total, and a ticket that does not fit is simply not resumable.

Tickets are stored as JSON, not pickles: the host store is shared with other processes.
"""

from __future__ import annotations

import datetime
import json
import logging

from aioquic.tls import CipherSuite, SessionTicket

from ...store import HostStore, StoreFull

log = logging.getLogger("gatewayd.quic")

PREFIX = b"tickets/"
# aioquic issues 64-byte tickets; a client may name anything, and store keys have a size limit
MAX_LABEL = 255


class TicketStore:
    __slots__ = ("store",)

    def __init__(self, store: HostStore):
        self.store = store

    def add(self, ticket: SessionTicket) -> None:
        """aioquic's `session_ticket_handler`: keep a ticket just issued to a client."""
        lifetime = (ticket.not_valid_after - ticket.not_valid_before).total_seconds()
        try:
            self.store.put(PREFIX + ticket.ticket, encode(ticket), ttl=lifetime)
        except StoreFull:
            log.warning("host store full: a QUIC session ticket was dropped (that client will not resume)")

    def take(self, label: bytes) -> SessionTicket | None:
        """aioquic's `session_ticket_fetcher`: the ticket a client presents, removed so it resumes once."""
        if len(label) > MAX_LABEL:
            return None
        raw = self.store.take(PREFIX + label)
        if raw is None:
            return None
        try:
            return decode(label, raw)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable QUIC session ticket in the host store; ignored")
            return None


def encode(t: SessionTicket) -> bytes:
    return json.dumps(
        {
            "age_add": t.age_add,
            "cipher_suite": int(t.cipher_suite),
            "not_valid_after": t.not_valid_after.timestamp(),
            "not_valid_before": t.not_valid_before.timestamp(),
            "resumption_secret": t.resumption_secret.hex(),
            "server_name": t.server_name,
            "max_early_data_size": t.max_early_data_size,
            "other_extensions": [[kind, data.hex()] for kind, data in t.other_extensions],
        },
        separators=(",", ":"),
    ).encode()


def decode(label: bytes, raw: bytes) -> SessionTicket:
    d = json.loads(raw)
    utc = datetime.UTC
    return SessionTicket(
        age_add=d["age_add"],
        cipher_suite=CipherSuite(d["cipher_suite"]),
        not_valid_after=datetime.datetime.fromtimestamp(d["not_valid_after"], utc),
        not_valid_before=datetime.datetime.fromtimestamp(d["not_valid_before"], utc),
        resumption_secret=bytes.fromhex(d["resumption_secret"]),
        server_name=d["server_name"],
        ticket=label,
        max_early_data_size=d["max_early_data_size"],
        other_extensions=[(kind, bytes.fromhex(data)) for kind, data in d["other_extensions"]],
    )
