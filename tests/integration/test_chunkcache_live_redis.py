"""Live variants and layer-wise loading through a node's chunk path with a real redis-server.

Node A serves a RAG request that misses everything: the plain path answers, then A records each
chunk as computed inside that prompt into Redis (and stores the later chunks computed after the
prompt's head alone, as the first one was). Nodes B and C (no local tier: Redis is their
only tier) find those variants: the same prompt reuses all three exactly (fraction 0) and
generates what the plain engine generated. B reads Redis layer by layer while it blends, C
reads whole values first: for a reordered prompt both generate the same tokens.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from prefill_node.chunks import ChunkPath
from splitserve.chunkcache.documents import document_prompt
from splitserve.chunkcache.keys import content_hash, model_fingerprint, prefix_hash
from splitserve.chunkcache.redis_tier import RedisTier
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.runtime.engine_loop import EngineLoop

DOCS = ["the river runs north past the old mill", "a bridge was built in 1820 by the town", "nobody lives there now"]
PARAMS = SamplingParams(max_tokens=6, ignore_eos=True)


def _node(model, redis_url, local_bytes, config):
    torch.set_num_threads(1)
    loop = EngineLoop(Engine(model, EngineConfig(num_blocks=64, block_size=16)))
    engine = loop.engine
    cfg = engine.model_config
    tier = RedisTier(redis_url, model_fingerprint(model), engine.config.dtype,
                     layout=(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim))
    loop.start()
    return ChunkPath(loop, ChunkCache(engine, ChunkStore(LocalTier(local_bytes), tier), config))


async def _generate(node, rid, ids, spans):
    tokens = [t async for out in node.generate(rid, ids, PARAMS, 0, spans) for t in out.new_token_ids]
    await asyncio.gather(*node._tasks)
    return tokens


@pytest.mark.slow
def test_live_variants_through_redis_and_layerwise_loading(tiny_model, redis_url):
    a = _node(tiny_model, redis_url, 1 << 24, ChunkCacheConfig())
    b = _node(tiny_model, redis_url, 0, ChunkCacheConfig(live_variants=0, layerwise_load=True))
    c = _node(tiny_model, redis_url, 0, ChunkCacheConfig(live_variants=0, layerwise_load=False))
    ids, spans = document_prompt(a.cache.engine.tokenizer, DOCS, "where is the mill?")
    swapped, spans2 = document_prompt(a.cache.engine.tokenizer, DOCS[::-1], "who built the bridge?")
    try:
        plain = asyncio.run(_generate(a, "a1", ids, spans))
        a_stats = a.stats()
        assert a_stats["misses"] == 3 and a_stats["recorded_variants"] == 3 and a_stats["blended_requests"] == 0
        held = b.cache.store.variants([content_hash(ids[s:s + n]) for s, n in spans])
        head = (spans[0][0], prefix_hash(ids[:spans[0][0]]))  # the later chunks also stored after the head alone
        assert sorted((m.start, m.prefix_hash) for ms in held.values() for m in ms) == \
            sorted([(s, prefix_hash(ids[:s])) for s, _ in spans] + [head] * (len(spans) - 1))

        assert asyncio.run(_generate(b, "b1", ids, spans)) == plain
        b_stats = b.stats()
        assert b_stats["exact_hits"] == 3 and b_stats["blended_requests"] == 1
        assert b_stats["redis_hits"] == 3 and b_stats["local_hits"] == 0 and b_stats["redis_bytes_read"] > 0

        layerwise = asyncio.run(_generate(b, "b2", swapped, spans2))
        whole = asyncio.run(_generate(c, "c2", swapped, spans2))
        assert layerwise == whole and b.stats()["blended_requests"] == c.stats()["blended_requests"] + 1
        assert b.stats()["recompute_fraction"] > 0 and c.stats()["recomputed_rows"] == \
            b.stats()["recomputed_rows"] - b_stats["recomputed_rows"]
    finally:
        for node in (a, b, c):
            node.engine_loop.stop()
