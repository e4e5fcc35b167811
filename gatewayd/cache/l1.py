"""The per-worker tier: stored responses in this process, least recently used evicted first, bounded by bytes.

A key (see keys.py) maps to a `Node`: the request fields the URL's responses vary on, and the
stored variants by (the request's values of those fields, consumer). LRU was chosen over a
frequency-aware policy by bench/cache_eviction.py: see its results in bench/results.
"""

from __future__ import annotations

from collections import OrderedDict


class Node:
    __slots__ = ("vary", "variants", "size", "url", "ns")

    def __init__(self, vary: tuple, url: bytes, ns: bytes):
        self.vary = vary  # request field names (lowercase) the stored responses vary on
        self.variants: dict[tuple, object] = {}  # (selected values, consumer or None) -> Entry
        self.size = 0
        self.url = url
        self.ns = ns


class L1:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self._nodes: OrderedDict[bytes, Node] = OrderedDict()
        self._by_url: dict[bytes, set[bytes]] = {}  # URL -> the keys of its nodes (hosts, namespaces)

    def __len__(self) -> int:
        return len(self._nodes)

    def node(self, key: bytes) -> Node | None:
        node = self._nodes.get(key)
        if node is not None:
            self._nodes.move_to_end(key)
        return node

    def put(self, key: bytes, ns: bytes, entry, selected: tuple) -> None:
        """Store `entry` as the variant of `key` for `selected` (the request's values of `entry.vary`);
        a response that varies on other fields than the stored ones replaces them all."""
        if entry.size > self.max_bytes // 8:
            return
        node = self._nodes.get(key)
        if node is None or node.vary != entry.vary:
            if node is not None:
                self.remove(key)
            node = self._nodes[key] = Node(entry.vary, entry.url, ns)
            self._by_url.setdefault(entry.url, set()).add(key)
        variant = (selected, entry.consumer)
        old = node.variants.get(variant)
        if old is not None:
            node.size -= old.size
            self.used -= old.size
        node.variants[variant] = entry
        node.size += entry.size
        self.used += entry.size
        self._nodes.move_to_end(key)
        self._fit()

    def _fit(self) -> None:
        while self.used > self.max_bytes and self._nodes:
            self.remove(next(iter(self._nodes)))

    def remove(self, key: bytes) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            self.used -= node.size
            keys = self._by_url.get(node.url)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_url[node.url]

    def drop_url(self, url: bytes) -> int:
        """Remove every stored response of `url` (any host, any variant); how many."""
        removed = 0
        for key in list(self._by_url.get(url, ())):
            removed += len(self._nodes[key].variants)
            self.remove(key)
        return removed

    def drop(self, keep) -> int:
        """Remove every node for which `keep(node)` is false, and every entry of the others for which
        `keep(node, entry)` is false; the number of entries removed."""
        removed = 0
        for key in list(self._nodes):
            node = self._nodes[key]
            if not keep(node, None):
                removed += len(node.variants)
                self.remove(key)
                continue
            for variant, entry in list(node.variants.items()):
                if not keep(node, entry):
                    del node.variants[variant]
                    node.size -= entry.size
                    self.used -= entry.size
                    removed += 1
            if not node.variants:
                self.remove(key)
        return removed

    def resize(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._fit()
