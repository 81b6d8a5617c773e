"""ChunkStore: the local LRU tier in front of Redis, with metrics and per-chunk variant limits.

Lookup is two steps so planning reads no tensor bytes: `variants()` gathers every tier's
metadata (one pipelined Redis round trip for all chunks), the caller picks one variant per
chunk (cachecraft.choose_variant), and `fetch()` reads the chosen KV from the local tier, then
Redis (promoting what it finds). Redis being down is a miss and a counter, never an error.
`fetch_layerwise()` returns the Redis values as they arrive, layer by layer (layer_fetch.py), so
the blended prefill computes layer l while layer l + 1 is read; they are promoted once verified.
"""

from __future__ import annotations

import logging

import torch

from splitserve.chunkcache.cachecraft import variants_to_evict
from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.layer_fetch import LayerwiseFetch, PendingKV
from splitserve.chunkcache.metrics import Metrics
from splitserve.chunkcache.redis_tier import RedisTier
from splitserve.chunkcache.tiers import LocalTier, VariantKey
from splitserve.chunkcache.variants import VariantMeta
from splitserve.redis_pipe import TierUnavailable

log = logging.getLogger(__name__)


class ChunkStore:
    def __init__(self, local: LocalTier, remote: RedisTier | None = None, max_variants: int = 5,
                 dtype: torch.dtype | None = None):
        """dtype: what chunk KV is kept in, in both tiers (the node's KV cache's, --kv-cache-dtype: a 16-bit cache
        keeps its chunks in 16 bits too, half the bytes to hold and to read from Redis); None: as computed."""
        self.local, self.remote = local, remote
        self.max_variants = max_variants
        self.dtype = dtype
        self.metrics = Metrics()

    def variants(self, chunks: list[str]) -> dict[str, list[VariantMeta]]:
        found = self.local.metas(chunks)
        remote = self._remote(lambda r: r.metas(chunks), {})
        for chunk, metas in remote.items():
            have = {m.variant_id for m in found.get(chunk, [])}
            found.setdefault(chunk, []).extend(m for m in metas if m.variant_id not in have)
        return found

    def fetch(self, chosen: list[VariantMeta]) -> dict[VariantKey, ChunkKV]:
        keys = [(m.chunk, m.variant_id) for m in chosen]
        found = self.local.fetch(keys)
        self.metrics.add(local_hits=len(found))
        rest = [k for k in keys if k not in found]
        if rest:
            before = self.remote.bytes_read if self.remote else 0
            remote = self._remote(lambda r: r.fetch(rest), {})
            metas = {(m.chunk, m.variant_id): m for m in chosen}
            for key, kv in remote.items():
                self.local.put(metas[key], kv)
            found.update(remote)
            self.metrics.add(redis_hits=len(remote), misses=len(rest) - len(remote),
                             redis_bytes_read=(self.remote.bytes_read - before) if self.remote else 0)
        return found

    def fetch_layerwise(self, chosen: list[VariantMeta]) -> tuple[dict[VariantKey, ChunkKV | PendingKV],
                                                                   LayerwiseFetch | None]:
        """Like fetch, but Redis values come as PendingKV; the LayerwiseFetch (None when all were
        local or nothing came from Redis) must be waited on before results leave the node."""
        if self.remote is None:
            return self.fetch(chosen), None
        keys = [(m.chunk, m.variant_id) for m in chosen]
        found: dict = self.local.fetch(keys)
        self.metrics.add(local_hits=len(found))
        rest = [m for m in chosen if (m.chunk, m.variant_id) not in found]
        if not rest:
            return found, None
        metas = {(m.chunk, m.variant_id): m for m in rest}
        before = self.remote.bytes_read
        loading = LayerwiseFetch(self.remote, lambda fetch: self._promote(metas, fetch, before))
        pending = self._remote(lambda r: loading.start(rest), {})
        found.update(pending)
        self.metrics.add(redis_hits=len(pending), misses=len(rest) - len(pending))
        return found, loading if pending else None

    def _promote(self, metas: dict[VariantKey, VariantMeta], fetch: LayerwiseFetch, before: int) -> None:
        for key in fetch.keys:
            if self.local.fits(metas[key]):
                self.local.put(metas[key], fetch.whole(key))
        self.metrics.add(redis_bytes_read=self.remote.bytes_read - before)

    def put(self, meta: VariantMeta, kv: ChunkKV) -> None:
        if self.dtype is not None and kv.k.dtype != self.dtype:
            kv = ChunkKV(kv.k.to(self.dtype), kv.v.to(self.dtype), kv.positions)
        self.local.put(meta, kv)
        if self.remote is not None:
            before = self.remote.bytes_written
            self._remote(lambda r: r.put(meta, kv), None)
            self.metrics.add(redis_bytes_written=self.remote.bytes_written - before)
        self.metrics.add(stored_variants=1)
        self._limit_variants(meta.chunk)

    def _limit_variants(self, chunk: str) -> None:
        variants = self.variants([chunk]).get(chunk, [])
        if len(variants) <= self.max_variants:
            return
        hits = self._remote(lambda r: r.hits(chunk), None)
        if hits is None:
            hits = self.local.hits_of(chunk)
        for meta in variants_to_evict(variants, hits, self.max_variants):
            self.local.delete((chunk, meta.variant_id))
            self._remote(lambda r: r.delete((chunk, meta.variant_id)), None)
            self.metrics.add(evicted_variants=1)

    def _remote(self, fn, default):
        if self.remote is None:
            return default
        corrupt = self.remote.num_corrupt
        try:
            return fn(self.remote)
        except TierUnavailable as exc:
            self.metrics.add(redis_errors=1)
            log.debug("chunk-cache redis unavailable: %s", exc)
            return default
        finally:
            self.metrics.add(corrupt_values=self.remote.num_corrupt - corrupt)

    def local_chunks(self) -> list[str]:
        return self.local.chunks()
