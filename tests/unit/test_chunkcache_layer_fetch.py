"""Layer-wise loading from a real redis-server: every layer bit-identical to a whole decode, the
checksum verified after the last layer, bad headers and vanished values dropped, and a blended
prefill fed layer by layer equal to one fed whole values."""

from __future__ import annotations

import pytest
import redis
import torch

from splitserve.chunkcache.documents import document_prompt
from splitserve.chunkcache.format import HEADER_BYTES, ChunkKV, CorruptValue, decode, encode
from splitserve.chunkcache.keys import model_fingerprint
from splitserve.chunkcache.layer_fetch import LayerwiseFetch
from splitserve.chunkcache.redis_tier import RedisTier
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.chunkcache.variants import ChunkStats, VariantMeta
from splitserve.engine import Engine, EngineConfig, SamplingParams

FP = bytes(range(16))


def _kv(n, dtype=torch.float32, seed=0, positions=True):
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(3, n, 2, 8, generator=g).to(dtype), torch.randn(3, n, 2, 8, generator=g).to(dtype)
    return ChunkKV(k, v, torch.arange(5, 5 + n) if positions else None)


def _meta(chunk, n):
    return VariantMeta(chunk, "00" * 16, 5, n, 0, ChunkStats())


@pytest.mark.parametrize("dtype,quantize,positions", [(torch.float32, False, True), (torch.bfloat16, False, True),
                                                      (torch.float32, True, True), (torch.float16, False, False)])
def test_layers_are_what_a_whole_decode_gives(redis_url, dtype, quantize, positions):
    tier = RedisTier(redis_url, FP, str(dtype).removeprefix("torch."), quantize=quantize, layout=(3, 2, 8))
    metas = [_meta(f"c{i}", n) for i, n in enumerate((6, 11))]
    for i, m in enumerate(metas):
        tier.put(m, _kv(m.num_tokens, dtype, seed=i, positions=positions))
    whole = tier.fetch([(m.chunk, m.variant_id) for m in metas])
    promoted = {}
    fetch = LayerwiseFetch(tier, lambda done: promoted.update({key: done.whole(key) for key in done.keys}))
    pending = fetch.start(metas)
    for m in metas:
        key, ref = (m.chunk, m.variant_id), whole[(m.chunk, m.variant_id)]
        for layer in range(3):
            k, v = pending[key].layer(layer)
            assert torch.equal(k, ref.k[layer]) and torch.equal(v, ref.v[layer])
        assert (ref.positions is None) == (pending[key].positions is None)
        assert ref.positions is None or torch.equal(pending[key].positions, ref.positions)
    fetch.wait()
    assert all(torch.equal(promoted[key].k, whole[key].k) and torch.equal(promoted[key].v, whole[key].v)
               for key in whole)
    assert tier.hits("c0") == {metas[0].variant_id: 2}  # both reads count as a use


def test_a_bad_checksum_is_found_after_the_last_layer(redis_url):
    tier = RedisTier(redis_url, FP, "float32", layout=(3, 2, 8))
    metas = [_meta("good", 6), _meta("bad", 6)]
    for m in metas:
        tier.put(m, _kv(6))
    raw = tier.client
    key = f"{tier.base}:bad:kv:{metas[1].variant_id}"
    raw.setrange(key, len(raw.get(key)) - 3, b"\x00\x01\x02")  # last layer's V
    fetch = LayerwiseFetch(tier)
    pending = fetch.start(metas)
    pending[("bad", metas[1].variant_id)].layer(0)  # early layers arrive before the checksum is known
    with pytest.raises(CorruptValue, match="checksum does not match the header for 1 value"):
        fetch.wait()
    assert tier.metas(["good", "bad"]).keys() == {"good"}  # counted by the receiver of the error, once


def test_bad_headers_and_vanished_values_are_dropped_up_front(redis_url):
    tier = RedisTier(redis_url, FP, "float32", layout=(3, 2, 8))
    metas = [_meta("ok", 6), _meta("gone", 6), _meta("foreign", 6), _meta("short", 6)]
    for m in metas:
        tier.put(m, _kv(6))
    raw = redis.Redis.from_url(redis_url)
    raw.delete(f"{tier.base}:gone:kv:{metas[1].variant_id}")
    raw.set(f"{tier.base}:foreign:kv:{metas[2].variant_id}", encode(_kv(6), bytes(16)))
    raw.set(f"{tier.base}:short:kv:{metas[3].variant_id}", encode(_kv(6), FP)[:HEADER_BYTES + 40])
    fetch = LayerwiseFetch(tier)
    assert list(fetch.start(metas)) == [("ok", metas[0].variant_id)]
    fetch.wait()
    assert set(tier.metas([m.chunk for m in metas])) == {"ok"} and tier.num_corrupt == 2


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16))


def _blend(engine, cache, ids, spans, rid):
    """-> plan, outcome, the layers sent, and the K/V the blend wrote for every layer."""
    plan = cache.plan(ids, spans)
    sent, written = [], []

    def on_layer(layer, slots):
        sent.append(layer)
        k, v = engine.cache.flat(layer)
        written.append((k[slots].clone(), v[slots].clone()))
    outcome = cache.blend(engine, rid, ids, plan, SamplingParams(max_tokens=4, ignore_eos=True), 0, on_layer)
    if outcome is not None:
        engine.cancel_reservation(rid)
    return plan, outcome, sent, written


def test_blend_fed_layer_by_layer_equals_blend_fed_whole_values(engine, tiny_model, redis_url):
    cfg = engine.model_config
    tier = RedisTier(redis_url, model_fingerprint(tiny_model), engine.config.dtype,
                     layout=(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim))
    docs = ["the river runs north past the old mill", "a bridge was built in 1820 by the town", "nobody lives here"]
    ids, spans = document_prompt(engine.tokenizer, docs, "where is the mill?")
    whole = ChunkCache(engine, ChunkStore(LocalTier(0), tier), ChunkCacheConfig(layerwise_load=False))
    for s, n in spans:
        whole.store.put(*whole.compute_alone(engine, ids[s:s + n]))
    layerwise = ChunkCache(engine, ChunkStore(LocalTier(0), tier), ChunkCacheConfig(layerwise_load=True))
    plan_a, a, sent_a, kv_a = _blend(engine, whole, ids, spans, "a")
    plan_b, b, sent_b, kv_b = _blend(engine, layerwise, ids, spans, "b")
    assert plan_a.loading is None and plan_b.loading is not None and len(plan_b.placed) == 3
    assert torch.equal(a.logits, b.logits) and a.sample.token_id == b.sample.token_id
    assert a.computed_rows == b.computed_rows and sent_a == sent_b == list(range(cfg.num_layers))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(kv_a, kv_b))
    engine.check_integrity()

    key = next(iter(tier.client.scan_iter(f"{tier.base}:*:kv:*")))
    tier.client.setrange(key, tier.client.strlen(key) - 2, b"\xff\xff")
    plan_c, c, sent_c, _ = _blend(engine, layerwise, ids, spans, "c")
    assert c is None and sent_c == []  # nothing left the node; the request can take the plain path
    assert layerwise.store.metrics.snapshot()["corrupt_values"] == 1 and tier.client.get(key) is None
    engine.check_integrity()


def test_the_store_promotes_verified_values_to_its_local_tier(redis_url):
    tier = RedisTier(redis_url, FP, "float32", layout=(3, 2, 8))
    meta = _meta("c", 6)
    tier.put(meta, _kv(6))
    meta = tier.metas(["c"])["c"][0]  # with its stored size
    store = ChunkStore(LocalTier(1 << 20), tier)
    found, loading = store.fetch_layerwise([meta])
    assert loading is not None and found[("c", meta.variant_id)].num_tokens == 6
    loading.wait()
    again, none = store.fetch_layerwise([meta])
    assert none is None and torch.equal(again[("c", meta.variant_id)].k, _kv(6).k)
    assert store.metrics.snapshot()["local_hits"] == 1 and store.metrics.snapshot()["redis_hits"] == 1
