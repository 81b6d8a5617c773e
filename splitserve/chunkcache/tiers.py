"""Chunk-cache tiers. The local tier holds decoded KV in memory under a byte budget.

A tier is keyed by (chunk hash, variant id). `metas` answers which variants a tier holds
without reading KV; `fetch` returns decoded KV for chosen variants.

Eviction (`score`, the default) follows Cache-Craft: keep what is reused often and saves much.
Each entry's value is (1 + hits) x (2 - 2 CCI) per token (cachecraft.retention_value over the
tokens; a variant with a high context impact needs more fixing, so saves less). Entries are
kept in priority `clock + value` (GreedyDual: `clock` rises to each evicted priority, so entries
that stop being hit age out instead of sitting forever on old hits); the lowest priority goes
first, the least recently used among equals. `lru` is plain least-recently-used (the baseline).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict

from splitserve.chunkcache.cachecraft import retention_value
from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.variants import VariantMeta

VariantKey = tuple[str, str]  # (chunk hash, variant id)
EVICTIONS = ("score", "lru")


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

    def __init__(self, capacity_bytes: int, eviction: str = "score"):
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {', '.join(EVICTIONS)}, got {eviction!r}")
        self.capacity_bytes, self.eviction = capacity_bytes, eviction
        self.hits: dict[VariantKey, int] = {}
        self._priority: dict[VariantKey, float] = {}
        self._clock = 0.0
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
                    self.hits[key] = self.hits.get(key, 0) + 1
                    self._prioritize(key)
                    found[key] = self._entries[key][1]
            return found

    def hits_of(self, chunk: str) -> dict[str, int]:
        """variant id -> times fetched from this tier, for the chunk's variants held."""
        with self._lock:
            return {vid: n for (c, vid), n in self.hits.items() if c == chunk}

    def _prioritize(self, key: VariantKey) -> None:
        meta = self._entries[key][0]
        self._priority[key] = self._clock + retention_value(meta, self.hits.get(key, 0)) / meta.num_tokens

    def _victim(self, newest: VariantKey) -> VariantKey:
        """Never the entry just put (it is admitted, as under LRU)."""
        if self.eviction == "lru":
            return next(iter(self._entries))
        others = (k for k in self._entries if k != newest)
        victim = min(others, key=self._priority.__getitem__)  # the first minimum: least recently used
        self._clock = self._priority[victim]
        return victim

    def fits(self, meta: VariantMeta) -> bool:
        """Whether this variant can be held at all (meta.num_bytes: its stored size, about its KV's)."""
        return self.capacity_bytes > 0 and meta.num_bytes <= self.capacity_bytes

    def put(self, meta: VariantMeta, kv: ChunkKV) -> None:
        if kv.num_bytes > self.capacity_bytes:
            return
        key = (meta.chunk, meta.variant_id)
        with self._lock:
            self._remove(key)
            self._entries[key] = (meta, kv)
            self._by_chunk.setdefault(meta.chunk, {})[meta.variant_id] = meta
            self.num_bytes += kv.num_bytes
            self._prioritize(key)
            while self.num_bytes > self.capacity_bytes:
                self._remove(self._victim(key), forget_hits=True)
                self.num_evicted += 1

    def delete(self, key: VariantKey) -> None:
        with self._lock:
            self._remove(key, forget_hits=True)

    def _remove(self, key: VariantKey, forget_hits: bool = False) -> None:
        entry = self._entries.pop(key, None)
        self._priority.pop(key, None)
        if forget_hits:
            self.hits.pop(key, None)
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
