"""The Redis tier (redis-py: connection pool, pipelines, TTL).

Layout under `base` = `ss:cc:v1:<model fingerprint>:<dtype>`:

    <base>:<chunk>:m            HASH  variant id -> metadata JSON (variants.py)
    <base>:<chunk>:h            HASH  variant id -> hit count
    <base>:<chunk>:kv:<variant> STRING the value (format.py)

A put writes the KV before the metadata, so a reader that sees metadata finds the KV unless
Redis evicted it; a metadata entry whose KV is gone, or a value that fails to decode, is
deleted and reported missing; so is a value whose dtype or shape (layers, KV heads, head dim)
is not the model's, whatever its checksum says. Any connection error marks the tier down for
`retry_after_s` (calls fail fast with TierUnavailable meanwhile: splitserve/redis_pipe.py), so a
dead Redis costs a request nothing.
"""

from __future__ import annotations

import dataclasses

import torch

from splitserve.chunkcache.format import ChunkKV, CorruptValue, decode, encode
from splitserve.chunkcache.keys import KEY_PREFIX
from splitserve.chunkcache.tiers import Tier, VariantKey
from splitserve.chunkcache.variants import VariantMeta
from splitserve.redis_pipe import RedisPipe


class RedisTier(Tier):
    name = "redis"

    def __init__(self, url: str, fingerprint: bytes, dtype: str, ttl_s: int = 86400, quantize: bool = False,
                 retry_after_s: float = 1.0, timeout_s: float = 1.0, max_connections: int = 16,
                 layout: tuple[int, int, int] | None = None):
        self.pipe = RedisPipe(url, timeout_s, retry_after_s, max_connections)
        self.client = self.pipe.client  # redis-py's, for direct reads (tests, tools)
        self.fingerprint, self.ttl_s, self.quantize = fingerprint, ttl_s, quantize
        self.base = f"{KEY_PREFIX}:{fingerprint.hex()}:{dtype}"
        self.dtype = getattr(torch, dtype)
        self.layout = layout  # (num_layers, num_kv_heads, head_dim) of the model; None: not checked
        self.num_corrupt = 0
        self.bytes_read = self.bytes_written = 0

    def _key(self, chunk: str, suffix: str) -> str:
        return f"{self.base}:{chunk}:{suffix}"

    def _run(self, build) -> list:
        return self.pipe.run(build)

    def metas(self, chunks: list[str]) -> dict[str, list[VariantMeta]]:
        replies = self._run(lambda p: [p.hgetall(self._key(c, "m")) for c in chunks])
        found, bad = {}, []
        for chunk, fields in zip(chunks, replies):
            for vid, raw in fields.items():
                try:
                    found.setdefault(chunk, []).append(VariantMeta.from_json(raw))
                except CorruptValue:
                    bad.append((chunk, vid.decode()))
        for key in bad:
            self.num_corrupt += 1
            self.delete(key)
        return found

    def hits(self, chunk: str) -> dict[str, int]:
        raw = self._run(lambda p: p.hgetall(self._key(chunk, "h")))[0]
        return {k.decode(): int(v) for k, v in raw.items()}

    def fetch(self, keys: list[VariantKey]) -> dict[VariantKey, ChunkKV]:
        def build(p):
            for chunk, vid in keys:
                p.get(self._key(chunk, f"kv:{vid}"))
                p.hincrby(self._key(chunk, "h"), vid, 1)
        replies = self._run(build)[0::2]
        found = {}
        for key, blob in zip(keys, replies):
            if blob is None:  # evicted by Redis: drop the orphan metadata
                self.delete(key)
                continue
            self.bytes_read += len(blob)
            try:
                found[key] = self._fitting(decode(blob, self.fingerprint))
            except CorruptValue:
                self.num_corrupt += 1
                self.delete(key)
        return found

    def heads(self, keys: list[VariantKey], num_bytes: list[int]) -> list[tuple[int, bytes]]:
        """(value length, its first num_bytes bytes) per key ((0, b"") when gone); counts a hit for each,
        like fetch. For layer-wise loading (layer_fetch.py)."""
        def build(p):
            for (chunk, vid), size in zip(keys, num_bytes):
                p.strlen(self._key(chunk, f"kv:{vid}"))
                p.getrange(self._key(chunk, f"kv:{vid}"), 0, size - 1)
                p.hincrby(self._key(chunk, "h"), vid, 1)
        replies = self._run(build)
        return [(int(replies[i]), replies[i + 1]) for i in range(0, len(replies), 3)]

    def ranges(self, spans: list[tuple[VariantKey, int, int]]) -> list[bytes]:
        """Bytes [start, end) of each key's value, in one round trip."""
        out = self._run(lambda p: [p.getrange(self._key(c, f"kv:{v}"), a, b - 1) for (c, v), a, b in spans])
        self.bytes_read += sum(map(len, out))
        return out

    def check_layout(self, dtype: torch.dtype, shape: tuple[int, int, int]) -> None:
        """CorruptValue unless dtype and (layers, KV heads, head dim) are the model's."""
        if dtype != self.dtype or (self.layout is not None and shape != self.layout):
            raise CorruptValue(f"value is {dtype} {shape}, the model's KV is {self.dtype} {self.layout}")

    def _fitting(self, kv: ChunkKV) -> ChunkKV:
        num_layers, _, heads, dim = kv.k.shape  # [L, n, Hkv, D]
        self.check_layout(kv.k.dtype, (num_layers, heads, dim))
        return kv

    def put(self, meta: VariantMeta, kv: ChunkKV) -> None:
        blob = encode(kv, self.fingerprint, self.quantize)
        meta = dataclasses.replace(meta, num_bytes=len(blob))
        chunk, vid = meta.chunk, meta.variant_id

        def build(p):
            p.set(self._key(chunk, f"kv:{vid}"), blob, ex=self.ttl_s)
            p.hset(self._key(chunk, "m"), vid, meta.to_json())
            p.expire(self._key(chunk, "m"), self.ttl_s)
            p.hsetnx(self._key(chunk, "h"), vid, 0)
            p.expire(self._key(chunk, "h"), self.ttl_s)
        self._run(build)
        self.bytes_written += len(blob)

    def delete(self, key: VariantKey) -> None:
        chunk, vid = key
        self._run(lambda p: [p.delete(self._key(chunk, f"kv:{vid}")), p.hdel(self._key(chunk, "m"), vid),
                             p.hdel(self._key(chunk, "h"), vid)])

    def ping(self) -> bool:
        return self.pipe.ping()
