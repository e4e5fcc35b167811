"""The client's address, as far as the gateway can believe it: `server.trusted_proxies`.

Without trusted proxies it is the connection's peer, and `X-Forwarded-For` is ignored: anyone can
write one. With them, a request from a trusted proxy is taken at its word: the address is the first
in its `X-Forwarded-For` (all such fields, in order), from the right, that is not itself a trusted
proxy (each proxy appends the address it saw, so the right end was written by the proxies closest to
us, the left end by whoever the client is). A request from any other peer is its peer, whatever
header it carries. An entry that is not an address counts as the client (it is not a trusted proxy);
ports and brackets (`[2001:db8::1]:443`, `192.0.2.7:5000`) are dropped, and addresses are compared
in their canonical form.

Whether an address is trusted is decided once per distinct address and kept in a bounded dict, so
the usual request costs a dict lookup for its peer (and a scan of its headers when that peer is a
trusted proxy).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Callable

# addresses whose trust is remembered; the oldest goes first when full
CACHE_SIZE = 4096
# an entry that is not an address and is longer than this is told apart by its digest
LONG_TEXT = 64
_XFF = b"x-forwarded-for"


def peer_of(ex) -> str:
    """The connection's peer address ("" when the server gave none, as on a Unix socket)."""
    client = ex.scope.get("client")
    return client[0] if client else ""


def canonical(text: str) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None]:
    """An address as written in a peer or X-Forwarded-For entry: (canonical text, address), or
    (the text, None) when it is not an address."""
    text = text.strip()
    candidate = text
    if candidate.startswith("["):  # [v6] or [v6]:port
        candidate = candidate[1 : candidate.find("]")] if "]" in candidate else candidate
    elif candidate.count(":") == 1:  # v4:port
        candidate = candidate.partition(":")[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:  # not an address: itself, or its digest when long
        return (
            text if len(text) <= LONG_TEXT else "#" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        ), None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), address


def client_ip(trusted_proxies: tuple) -> Callable[[object], str]:
    """`key(ex) -> str`, the client address of a request, believing `trusted_proxies` (ipaddress networks)."""
    if not trusted_proxies:
        return peer_of
    cache: OrderedDict[str, tuple[str, bool]] = OrderedDict()

    def judge(text: str) -> tuple[str, bool]:
        """(canonical address, whether it is a trusted proxy), remembered."""
        known = cache.get(text)
        if known is None:
            address_text, address = canonical(text)
            trusted = address is not None and any(
                address in net for net in trusted_proxies if net.version == address.version
            )
            known = (address_text, trusted)
            if len(cache) >= CACHE_SIZE:
                cache.popitem(last=False)
            cache[text] = known
        return known

    def key(ex) -> str:
        scope = ex.scope
        client = scope.get("client")
        peer, trusted = judge(client[0] if client else "")
        if not trusted:
            return peer
        forwarded = None
        for name, value in scope["headers"]:
            if name == _XFF:
                forwarded = value if forwarded is None else forwarded + b"," + value
        if forwarded is None:
            return peer
        address = peer
        for entry in reversed(forwarded.decode("latin-1").split(",")):
            if entry.strip():
                address, trusted = judge(entry)
                if not trusted:
                    return address
        return address  # every hop is a trusted proxy: the farthest one

    key.cache = cache
    return key
