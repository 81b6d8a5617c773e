"""Cache-Craft in live traffic: which chunks a request records, the variant planning picks among
recorded ones, and the local tier's reuse x saving eviction (against LRU)."""

from __future__ import annotations

import pytest
import torch

from splitserve.chunkcache.cachecraft import CacheCraftConfig, ChunkContext, choose_variant
from splitserve.chunkcache.documents import document_prompt
from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.live import record_targets
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.chunkcache.variants import ChunkStats, VariantMeta
from splitserve.engine import Engine, EngineConfig

DOCS = ["the river runs north past the old mill", "a bridge was built in 1820 by the town",
        "nobody lives there now", "the mill burned down in 1901"]


def _meta(chunk="c", prefix="p", start=1, n=4, inter=(), keys=(), intra=1.0):
    stats = ChunkStats(tuple(keys), tuple([4] * len(keys)), tuple(inter), intra, ())
    return VariantMeta(chunk, prefix, start, n, 0, stats)


def _kv(n=4):
    return ChunkKV(torch.zeros(1, n, 1, 2), torch.zeros(1, n, 1, 2), torch.arange(n))  # 64 bytes at n=4


def test_record_targets_are_new_contexts_below_the_limit():
    ctx = [ChunkContext(1, "h0", ()), ChunkContext(5, "h1", ("a",)), ChunkContext(9, "h2", ("a", "b"))]
    held = [[], [_meta(prefix="h1", start=5)], [_meta(prefix="x", start=9)]]
    assert record_targets(held, ctx, limit=4) == [0, 2]  # a miss and a context not stored; chunk 1 is exact
    assert record_targets(held, ctx, limit=1) == [0]  # chunk 2 already holds one variant
    assert record_targets(held, ctx, limit=0) == []


def test_planning_picks_the_variant_whose_context_matches_best():
    cfg = CacheCraftConfig(alpha=1.0, min_fraction=0.0)
    after_ab = _meta(prefix="ab", start=9, inter=(0.5, 2.0), keys=("a", "b"))
    after_cd = _meta(prefix="cd", start=9, inter=(1.0, 1.0), keys=("c", "d"))
    plan = choose_variant([after_cd, after_ab], ChunkContext(9, "xb", ("x", "b")), cfg)
    assert plan.variant is after_ab and 0 < plan.fraction < 1  # b carries most of its attention
    plan = choose_variant([after_ab, after_cd], ChunkContext(9, "dc", ("d", "c")), cfg)
    assert plan.variant is after_cd and plan.cfo > 0  # same chunks, reversed order: the order penalty
    assert choose_variant([after_ab, after_cd], ChunkContext(9, "ab", ("a", "b")), cfg).fraction == 0.0


def test_score_eviction_keeps_what_is_reused_and_lru_does_not():
    def run(eviction):
        tier = LocalTier(3 * 64, eviction)
        for name in "abc":
            tier.put(_meta(name), _kv())
        for _ in range(3):
            tier.fetch([("a", _meta("a").variant_id)])  # a: reused often, but least recently
        tier.fetch([("b", _meta("b").variant_id)])
        tier.fetch([("c", _meta("c").variant_id)])
        tier.put(_meta("d"), _kv())
        return sorted(tier.chunks())
    assert run("lru") == ["b", "c", "d"]
    assert run("score") == ["a", "c", "d"]  # b and c tie (1 hit each): the least recently used of them goes


def test_score_eviction_prefers_variants_that_need_less_fixing():
    tier = LocalTier(2 * 64)
    tier.put(_meta("lean", keys=("x",), inter=(0.0,)), _kv())  # no context impact: CCI 0.5
    tier.put(_meta("heavy", keys=("x",), inter=(8.0,), intra=0.1), _kv())  # CCI ~1: reusing it saves little
    tier.put(_meta("new"), _kv())  # the entry just put is always admitted
    assert sorted(tier.chunks()) == ["lean", "new"]


def test_unused_entries_age_out_under_score_eviction():
    tier = LocalTier(2 * 64)
    tier.put(_meta("old"), _kv())
    for _ in range(2):
        tier.fetch([("old", _meta("old").variant_id)])
    for i in range(8):  # each newcomer evicts the previous one and raises the clock
        tier.put(_meta(f"n{i}"), _kv())
    assert "old" not in tier.chunks() and tier.hits_of("old") == {}
    with pytest.raises(ValueError, match="eviction"):
        LocalTier(10, "fifo")


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16))


def test_recorded_variants_are_exact_in_their_context_and_chosen_by_overlap(engine):
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 24)), ChunkCacheConfig(live_variants=2))
    first, spans = document_prompt(engine.tokenizer, DOCS[:3], "where is the mill?")
    plan = cache.plan(first, spans)
    assert plan.misses == plan.record == [0, 1, 2]
    for meta, kv in cache.record(engine, first, spans, plan.keys, plan.record):
        cache.store.put(meta, kv)
    assert cache.store.metrics.snapshot()["recorded_variants"] == 3
    again = cache.plan(first, spans)
    assert again.exact == 3 and [b.fraction for b in again.budgets] == [0.0] * 3 and again.record == []
    swapped, spans2 = document_prompt(engine.tokenizer, [DOCS[1], DOCS[0], DOCS[2]], "who built it?")
    plan2 = cache.plan(swapped, spans2)
    assert plan2.exact == 0 and plan2.record == [0, 1, 2]  # every chunk now sits in a new context
    recorded = cache.record(engine, swapped, spans2, plan2.keys, plan2.record)
    for meta, kv in recorded:
        cache.store.put(meta, kv)
    assert [len(v) for v in cache.store.variants(plan2.keys).values()] == [2, 2, 2]
    assert cache.plan(swapped, spans2).exact == 3
    third, spans3 = document_prompt(engine.tokenizer, [DOCS[3], DOCS[1], DOCS[0], DOCS[2]], "and now?")
    plan3 = cache.plan(third, spans3)
    assert plan3.record == [0]  # only the miss: the others hold live_variants variants already
    # DOCS[2] was recorded after DOCS[0], DOCS[1] and after DOCS[1], DOCS[0]; it now follows DOCS[1], DOCS[0]:
    # the second variant has full prefix overlap in the same order (CFO 0), the first the reversed order
    assert torch.equal(plan3.placed[2].kv.k, recorded[2][1].k) and plan3.budgets[2].fraction == 0.15
