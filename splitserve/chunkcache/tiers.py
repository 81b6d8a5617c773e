"""Chunk-cache tiers. The local tier is an in-memory LRU of decoded KV under a byte budget.

A tier is keyed by (chunk hash, variant id). `metas` answers which variants a tier holds
without reading KV; `fetch` returns decoded KV for chosen variants.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict

from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.variants import VariantMeta

VariantKey = tuple[str, str]  # (chunk hash, variant id)


class Tier(ABC):
    name: str

    @abstractmethod
    def metas(self, chunks: list[str]) -> dict[str, list[VariantMeta]]:
        """Variants held for each chunk (chunks with none are absent). Never raises for a miss."""

    @abstractmethod
    def fetch(self, keys: list[VariantKey]) -> dict[VariantKey, ChunkKV]:
        """Decoded KV of the keys found; missing or corrupt ones are absent (and corrupt ones deleted)."""

    @abstractmethod
    def put(self, meta: VariantMeta, kv: ChunkKV) -> None:
        """Stores one variant; replaces an equal (chunk, variant id)."""

    @abstractmethod
    def delete(self, key: VariantKey) -> None:
        ...


class LocalTier(Tier):
    name = "local"

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.num_bytes = 0
        self._entries: OrderedDict[VariantKey, tuple[VariantMeta, ChunkKV]] = OrderedDict()
        self._by_chunk: dict[str, dict[str, VariantMeta]] = {}
        self._lock = threading.Lock()
        self.num_evicted = 0

    def metas(self, chunks: list[str]) -> dict[str, list[VariantMeta]]:
        with self._lock:
            return {c: list(self._by_chunk[c].values()) for c in chunks if c in self._by_chunk}

    def fetch(self, keys: list[VariantKey]) -> dict[VariantKey, ChunkKV]:
        with self._lock:
            found = {}
            for key in keys:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    found[key] = self._entries[key][1]
            return found

    def put(self, meta: VariantMeta, kv: ChunkKV) -> None:
        if kv.num_bytes > self.capacity_bytes:
            return
        key = (meta.chunk, meta.variant_id)
        with self._lock:
            self._remove(key)
            self._entries[key] = (meta, kv)
            self._by_chunk.setdefault(meta.chunk, {})[meta.variant_id] = meta
            self.num_bytes += kv.num_bytes
            while self.num_bytes > self.capacity_bytes:
                self._remove(next(iter(self._entries)))
                self.num_evicted += 1

    def delete(self, key: VariantKey) -> None:
        with self._lock:
            self._remove(key)

    def _remove(self, key: VariantKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.num_bytes -= entry[1].num_bytes
        variants = self._by_chunk[key[0]]
        variants.pop(key[1], None)
        if not variants:
            del self._by_chunk[key[0]]

    def chunks(self) -> list[str]:
        """Chunk hashes held, most recently used first."""
        with self._lock:
            return list(dict.fromkeys(chunk for chunk, _ in reversed(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)
