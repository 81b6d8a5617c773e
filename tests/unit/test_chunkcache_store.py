"""Value format, local LRU tier, Redis tier (a real redis-server), the store's tier order and faults."""

from __future__ import annotations

import hashlib
import struct

import pytest
import redis
import torch

from splitserve.chunkcache.format import FLAG_XXH3, HEADER_BYTES, ChunkKV, CorruptValue, decode, encode
from splitserve.chunkcache.keys import content_hash, storage_key
from splitserve.chunkcache.redis_tier import RedisTier
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.chunkcache.variants import ChunkStats, VariantMeta

FP = bytes(range(16))


def _kv(n=6, dtype=torch.float32, seed=0, positions=True):
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(3, n, 2, 8, generator=g).to(dtype), torch.randn(3, n, 2, 8, generator=g).to(dtype)
    return ChunkKV(k, v, torch.arange(5, 5 + n) if positions else None)


def _meta(chunk="c1", start=1, n=6, prefix="00" * 16):
    return VariantMeta(chunk, prefix, start, n, 0, ChunkStats(("a",), (4,), (0.5,), 3.0, tuple([0.1] * n)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_format_round_trip_is_bit_identical(dtype):
    kv = _kv(dtype=dtype)
    out = decode(encode(kv, FP), FP)
    assert out.k.dtype == dtype and torch.equal(out.k, kv.k) and torch.equal(out.v, kv.v)
    assert torch.equal(out.positions, kv.positions)
    pre = decode(encode(_kv(positions=False), FP), FP)
    assert pre.positions is None


def test_int8_values_halve_bytes_and_stay_close():
    kv = _kv(n=64)
    raw, q = encode(kv, FP), encode(kv, FP, quantize=True)
    assert len(q) - HEADER_BYTES < 0.5 * (len(raw) - HEADER_BYTES)
    out = decode(q, FP)
    assert float((out.k - kv.k).abs().max()) <= float(kv.k.abs().amax(dim=(2, 3)).max()) / 127 * 0.51


def test_corruption_is_detected():
    blob = bytearray(encode(_kv(), FP))
    for broken in (bytes(blob[:-1]), bytes(blob[:20]), b"XXXX" + bytes(blob[4:])):
        with pytest.raises(CorruptValue):
            decode(broken, FP)
    blob[HEADER_BYTES + 100] ^= 0xFF
    with pytest.raises(CorruptValue, match="checksum"):
        decode(bytes(blob), FP)
    with pytest.raises(CorruptValue, match="fingerprint"):
        decode(encode(_kv(), FP), bytes(16))


def test_values_written_with_the_older_blake2b_checksum_are_still_read():
    """Values carry xxh3-64 checksums since 2026-12-07 (flag bit 2); a Redis may hold older ones (blake2b-64)."""
    kv, blob = _kv(), bytearray(encode(_kv(), FP))
    flags = struct.unpack_from("<H", blob, 6)[0]
    assert flags & FLAG_XXH3
    payload = bytes(blob[HEADER_BYTES:])
    struct.pack_into("<H", blob, 6, flags & ~FLAG_XXH3)
    blob[HEADER_BYTES - 16:HEADER_BYTES - 8] = hashlib.blake2b(payload, digest_size=8).digest()
    out = decode(bytes(blob), FP)
    assert torch.equal(out.k, kv.k) and torch.equal(out.v, kv.v)
    blob[HEADER_BYTES + 3] ^= 1
    with pytest.raises(CorruptValue, match="checksum"):
        decode(bytes(blob), FP)


def test_keys_are_position_independent_and_model_specific():
    assert content_hash([1, 2, 3]) == content_hash((1, 2, 3)) != content_hash([1, 2, 4])
    a, b = storage_key(FP, "float32", content_hash([1])), storage_key(bytes(16), "float32", content_hash([1]))
    assert a != b and len(a) <= 150


def test_meta_json_round_trip_and_corruption():
    meta = _meta()
    assert VariantMeta.from_json(meta.to_json()) == meta
    with pytest.raises(CorruptValue):
        VariantMeta.from_json(b"{not json")


def test_local_tier_lru_byte_budget():
    size = _kv().num_bytes
    tier = LocalTier(2 * size)
    for name in ("a", "b"):
        tier.put(_meta(name), _kv())
    tier.fetch([("a", _meta("a").variant_id)])  # a is now the most recent
    tier.put(_meta("c"), _kv())
    assert set(tier.chunks()) == {"a", "c"} and tier.num_bytes == 2 * size
    LocalTier(size - 1).put(_meta(), _kv())  # larger than the budget: not stored, no error


def test_redis_round_trip_bit_identical(redis_url):
    tier = RedisTier(redis_url, FP, "float32")
    meta, kv = _meta(), _kv()
    tier.put(meta, kv)
    metas = tier.metas(["c1", "missing"])
    assert list(metas) == ["c1"] and metas["c1"][0].stats == meta.stats and metas["c1"][0].num_bytes > 0
    out = tier.fetch([("c1", meta.variant_id)])[("c1", meta.variant_id)]
    assert torch.equal(out.k, kv.k) and torch.equal(out.v, kv.v) and torch.equal(out.positions, kv.positions)
    assert tier.hits("c1") == {meta.variant_id: 1}


def test_a_16_bit_kv_cache_keeps_its_chunks_in_16_bits_in_both_tiers(redis_url):
    """--kv-cache-dtype float16: chunk KV computed in fp32 is stored rounded, as the cache would hold it, under keys
    of its own dtype: half the bytes locally and in Redis, and read back exactly as stored."""
    meta, kv = _meta(), _kv()
    wide = ChunkStore(LocalTier(1 << 20), RedisTier(redis_url, FP, "float32"))
    half = ChunkStore(LocalTier(1 << 20), RedisTier(redis_url, FP, "float16"), dtype=torch.float16)
    wide.put(meta, kv)
    half.put(meta, kv)
    assert half.local.num_bytes * 2 == wide.local.num_bytes
    assert half.remote.bytes_written < 0.6 * wide.remote.bytes_written
    out = RedisTier(redis_url, FP, "float16").fetch([("c1", meta.variant_id)])[("c1", meta.variant_id)]
    assert out.k.dtype == torch.float16 and torch.equal(out.k, kv.k.half()) and torch.equal(out.v, kv.v.half())
    assert torch.equal(wide.remote.fetch([("c1", meta.variant_id)])[("c1", meta.variant_id)].k, kv.k)


def test_redis_corrupt_value_is_a_miss_and_deleted(redis_url):
    tier = RedisTier(redis_url, FP, "float32")
    meta = _meta()
    tier.put(meta, _kv())
    client = redis.Redis.from_url(redis_url)
    key = f"{tier.base}:c1:kv:{meta.variant_id}"
    blob = bytearray(client.get(key))
    blob[-1] ^= 0x01
    client.set(key, bytes(blob))
    assert tier.fetch([("c1", meta.variant_id)]) == {}
    assert tier.num_corrupt == 1 and client.get(key) is None and tier.metas(["c1"]) == {}


def test_orphan_metadata_is_dropped(redis_url):
    tier = RedisTier(redis_url, FP, "float32")
    meta = _meta()
    tier.put(meta, _kv())
    redis.Redis.from_url(redis_url).delete(f"{tier.base}:c1:kv:{meta.variant_id}")  # as if Redis evicted it
    assert tier.fetch([("c1", meta.variant_id)]) == {} and tier.metas(["c1"]) == {}


def test_store_finds_redis_after_local_eviction_and_promotes(redis_url):
    kv = _kv()
    store = ChunkStore(LocalTier(kv.num_bytes), RedisTier(redis_url, FP, "float32"))
    store.put(_meta("a"), kv)
    store.put(_meta("b"), _kv(seed=1))  # evicts a locally
    assert store.local.chunks() == ["b"]
    found = store.fetch([_meta("a")])
    assert torch.equal(found[("a", _meta("a").variant_id)].k, kv.k)
    assert store.local.chunks() == ["a"]
    snap = store.metrics.snapshot()
    assert snap["redis_hits"] == 1 and snap["local_hits"] == 0 and snap["redis_bytes_read"] > 0


def test_store_with_redis_down_is_a_miss_and_a_metric():
    store = ChunkStore(LocalTier(1 << 20), RedisTier("redis://127.0.0.1:1/0", FP, "float32", timeout_s=0.2))
    store.put(_meta("a"), _kv())  # local only; Redis unreachable
    assert store.variants(["a", "b"]).keys() == {"a"}
    assert store.fetch([_meta("zzz")]) == {}
    snap = store.metrics.snapshot()
    assert snap["redis_errors"] >= 1 and snap["misses"] == 1


def test_store_keeps_at_most_m_variants(redis_url):
    store = ChunkStore(LocalTier(1 << 20), RedisTier(redis_url, FP, "float32"), max_variants=2)
    for i in range(4):
        store.put(_meta("a", start=i + 1), _kv())
    assert len(store.variants(["a"])["a"]) == 2
    assert store.metrics.snapshot()["evicted_variants"] == 2
