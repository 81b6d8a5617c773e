"""Cache-Craft scores: prefix overlap (beta), order penalty (gamma), CCI, CFO, variant choice, retention."""

from __future__ import annotations

import math

import pytest

from splitserve.chunkcache.cachecraft import (CacheCraftConfig, ChunkContext, choose_variant, context_impact,
                                              fix_overhead, order_penalty, prefix_overlap, variants_to_evict)
from splitserve.chunkcache.variants import ChunkStats, VariantMeta

STATS = ChunkStats(("a", "b", "c"), (10, 10, 10), (2.0, 1.0, 1.0), 8.0, ())


def test_prefix_overlap():
    assert prefix_overlap(STATS, ("a", "b", "c")) == 1.0
    assert prefix_overlap(STATS, ("x", "a", "b", "c", "y")) == 1.0
    assert prefix_overlap(STATS, ("x", "y")) == 0.0
    assert prefix_overlap(STATS, ("a",)) == pytest.approx(0.5)
    assert prefix_overlap(ChunkStats(), ("a",)) == 1.0  # no old context: nothing lost


def test_order_penalty():
    assert order_penalty(("a", "b", "c"), ("a", "b", "c")) == 0.0
    assert order_penalty(("a", "b", "c"), ("c", "b", "a")) == 1.0
    assert order_penalty(("a", "b", "c"), ("b", "a", "c")) == pytest.approx(1 / 3)
    assert order_penalty(("a",), ("a",)) == 0.0
    assert order_penalty(("a", "b"), ("x",)) == 0.0


def test_context_impact_and_fix_overhead():
    assert context_impact(ChunkStats((), (), (), 5.0, ()), 10) == 0.5
    low = context_impact(ChunkStats(("a",), (10,), (1.0,), 50.0, ()), 10)
    high = context_impact(ChunkStats(("a",), (10,), (5.0,), 50.0, ()), 10)
    assert 0.5 < low < high < 1.0
    assert low == pytest.approx(1 / (1 + math.exp(-(1.0 / 100) / (50.0 / 100))))
    assert fix_overhead(1.0, 0.9, 1.0) == 0.0
    assert fix_overhead(1.0, 0.9, 0.0) == pytest.approx(0.9)
    assert fix_overhead(5.0, 0.9, 0.0) == 1.0
    beta_prime = prefix_overlap(STATS, ("c", "b", "a")) * (1 - order_penalty(STATS.prefix_keys, ("c", "b", "a")))
    assert beta_prime == 0.0


def _variant(prefix_keys, inter, start=1, prefix_hash="p0"):
    stats = ChunkStats(tuple(prefix_keys), tuple(10 for _ in prefix_keys), tuple(inter), 40.0, ())
    return VariantMeta("c", prefix_hash, start, 10, 0, stats)


def test_choose_variant_prefers_exact_prefix_then_least_fix():
    cfg = CacheCraftConfig(alpha=1.0, min_fraction=0.1)
    exact = _variant(["a"], [3.0], start=11, prefix_hash="hash-of-a")
    lost = _variant(["x"], [3.0], start=11)
    kept = _variant(["a"], [3.0], start=21, prefix_hash="other")
    ctx = ChunkContext(11, "hash-of-a", ("a",))
    assert choose_variant([lost, kept, exact], ctx, cfg).fraction == 0.0
    plan = choose_variant([lost, kept], ChunkContext(31, "new", ("a", "b")), cfg)
    assert plan.variant is kept and plan.fraction == 0.1
    plan = choose_variant([lost], ChunkContext(31, "new", ("a", "b")), cfg)
    assert plan.cfo > 0.5 and plan.fraction == plan.cfo
    assert choose_variant([], ctx, cfg) is None


def test_eviction_keeps_used_low_impact_variants():
    used = _variant(["a"], [0.1], start=1)
    heavy = _variant(["b"], [30.0], start=2)
    fresh = _variant([], [], start=3)
    hits = {used.variant_id: 9}
    assert variants_to_evict([heavy, used, fresh], hits, 2) == [heavy]


def test_config_validation():
    with pytest.raises(ValueError):
        CacheCraftConfig(min_fraction=2.0)


def test_prefer_context_takes_the_variant_that_saw_the_current_chunks():
    """By fix a variant computed alone always wins (CFO 0); prefer_context takes the live variant that saw
    most of the chunks now before it, and an exact variant still first."""
    alone = _variant([], [])
    after_ab = _variant(["a", "b"], [3.0, 3.0], start=21, prefix_hash="ab")
    after_x = _variant(["x"], [3.0], start=11, prefix_hash="x")
    ctx = ChunkContext(31, "ba", ("b", "a"))
    assert choose_variant([after_ab, after_x, alone], ctx, CacheCraftConfig(prefer_context=False)).variant is alone
    plan = choose_variant([after_x, alone, after_ab], ctx, CacheCraftConfig())
    assert plan.variant is after_ab and plan.fraction >= 0.15
    exact = _variant(["b", "a"], [1.0, 1.0], start=31, prefix_hash="ba")
    assert choose_variant([after_ab, exact], ctx, CacheCraftConfig(prefer_context=True)).variant is exact
    assert choose_variant([after_x, alone], ctx, CacheCraftConfig(prefer_context=True)).variant is alone  # tie: fix
