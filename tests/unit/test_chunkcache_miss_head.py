"""A node stores a chunk a request missed as computed after that request's head (the chat
template's header, or BOS): the attention sink sits before it, as where the benchmark computes
passages; a later request with the same head reuses the first chunk exactly. With live variants
(the default) a missed chunk is also recorded as computed in its request's prompt."""

from __future__ import annotations

import asyncio

from prefill_node.chunks import ChunkPath
from router.front.intake import Frontend
from splitserve.chunkcache.keys import prefix_hash
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, EngineConfig
from splitserve.runtime.engine_loop import EngineLoop

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is the mill?"}]
DOCS = ["the river runs north past the old mill", "a bridge was built in 1820 by the town"]


def _miss_then_plan(tiny_model, config: ChunkCacheConfig, documents=DOCS):
    ids, spans = Frontend.from_model_dir(tiny_model).prompt_and_chunks(messages=MESSAGES, documents=documents)
    loop = EngineLoop(Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16)))
    loop.start()
    try:
        path = ChunkPath(loop, ChunkCache(loop.engine, ChunkStore(LocalTier(1 << 24)), config))

        async def miss_then_plan():
            assert await path.plan(ids, list(spans)) is None  # all missed: the plain path runs
            await asyncio.gather(*path._tasks)
            return await path.plan(ids, list(spans))
        plan = asyncio.run(miss_then_plan())
    finally:
        loop.stop()
    return ids, spans, path, plan


def test_missed_chunks_are_stored_as_computed_after_the_request_head(tiny_model):
    # misses stored alone only (live variants: below and test_chunkcache_live*)
    ids, spans, path, plan = _miss_then_plan(tiny_model, ChunkCacheConfig(live_variants=0))
    head = ids[:spans[0][0]]
    found = path.cache.store.variants(plan.keys)
    assert [[(m.start, m.prefix_hash) for m in found[k]] for k in plan.keys] == [[(len(head), prefix_hash(head))]] * 2
    assert [b.fraction for b in plan.budgets] == [0.0, 0.15]  # the first chunk sits where it was computed


def test_with_live_variants_a_miss_is_stored_after_the_head_as_well_as_recorded_in_its_prompt(tiny_model):
    """A later request that puts the second chunk first reuses it exactly; the same prompt again reuses both
    chunks' recordings exactly; the first chunk is not computed twice (its recording is the variant after
    the head)."""
    ids, spans, path, plan = _miss_then_plan(tiny_model, ChunkCacheConfig(live_variants=4))
    head, found = ids[:spans[0][0]], path.cache.store.variants(plan.keys)
    assert [sorted((m.start, m.prefix_hash) for m in found[k]) for k in plan.keys] == [
        [(len(head), prefix_hash(head))],
        sorted([(len(head), prefix_hash(head)), (spans[1][0], prefix_hash(ids[:spans[1][0]]))])]
    assert [b.fraction for b in plan.budgets] == [0.0, 0.0]
    assert path.cache.store.metrics.snapshot()["recorded_variants"] == 2
    swapped, swapped_spans = Frontend.from_model_dir(tiny_model).prompt_and_chunks(messages=MESSAGES,
                                                                                  documents=DOCS[::-1])
    assert path.cache.plan(swapped, swapped_spans).budgets[0].fraction == 0.0
