"""ChunkCache on a real Engine: planning (misses, exact-prefix variants), blending into the paged
KV, admission for decoding; ratio 1.0 generates what the plain engine generates."""

from __future__ import annotations

import pytest
import torch

from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.documents import chat_document_prompt, document_head, document_prompt, special_prefix
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, EngineConfig, SamplingParams

DOCS = ["the river runs north past the old mill", "a bridge was built in 1820 by the town", "nobody lives there now"]


@pytest.fixture(scope="module", params=["auto", "float16"], ids=["kv-model-dtype", "kv-float16"])
def engine(tiny_model, request):
    """With the model's KV dtype, and with a 16-bit cache (--kv-cache-dtype): blended KV is written rounded as a
    prefill's is, so a blend at ratio 1 still generates what the engine does."""
    return Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16, kv_cache_dtype=request.param))


def _generate_blended(engine, cache, ids, spans, params):
    plan = cache.plan(ids, spans)
    outcome = cache.blend(engine, "b", ids, plan, params, 0)
    engine.admit_prefilled("b", ids, outcome.sample.token_id, params, register_prefix=False)
    tokens = [outcome.sample.token_id]
    while engine.has_unfinished():
        tokens += [t for out in engine.step() for t in out.new_token_ids]
    return plan, outcome, tokens


def _chat(engine, docs, question):
    return chat_document_prompt(engine.tokenizer, [{"role": "user", "content": question}], docs)


def test_plan_misses_then_hits(engine):
    ids, spans = _chat(engine, DOCS, "where is the mill?")
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 24), dtype=engine.config.kv_torch_dtype))
    plan = cache.plan(ids, spans)
    assert plan.misses == [0, 1, 2] and not plan.placed
    assert cache.store.metrics.snapshot()["misses"] == 3
    for s, n in spans:
        cache.store.put(*cache.compute_alone(engine, ids[s:s + n]))
    plan = cache.plan(ids, spans)
    assert plan.misses == [] and [p.start for p in plan.placed] == [s for s, _ in spans]
    assert [b.fraction for b in plan.budgets] == [0.0, 0.15, 0.15]  # the first chunk sits where it was computed


def test_chunks_are_computed_after_the_chat_head_by_default(engine):
    """Ingested chunks (no request yet) sit behind the head a chat request puts before its documents;
    a model without a chat template computes them after its special prefix."""
    ids, spans = _chat(engine, DOCS, "where is the mill?")
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 24), dtype=engine.config.kv_torch_dtype))
    assert cache.prefix == document_head(engine.tokenizer) == ids[:spans[0][0]]
    meta, kv = cache.compute_alone(engine, ids[spans[0][0]:sum(spans[0])])
    assert meta.start == spans[0][0] and kv.positions[0] == spans[0][0]

    class Plain:
        chat_template = None
        encode = engine.tokenizer.encode
    assert document_head(Plain()) == special_prefix(engine.tokenizer)


@pytest.mark.parametrize("penalties", [{}, dict(repetition_penalty=0.5, frequency_penalty=0.5)],
                         ids=["plain", "penalized"])
def test_ratio_one_generates_what_the_engine_generates(engine, penalties):
    ids, spans = document_prompt(engine.tokenizer, DOCS[::-1], "who built the bridge?")
    config = ChunkCacheConfig(BlendConfig((1,), (1.0,)), planning="ratio")
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 24), dtype=engine.config.kv_torch_dtype), config)
    for s, n in spans:
        cache.store.put(*cache.compute_alone(engine, ids[s:s + n]))
    params = SamplingParams(max_tokens=6, ignore_eos=True, **penalties)  # penalized: the blend samples another first token
    plan, outcome, tokens = _generate_blended(engine, cache, ids, spans, params)
    assert plan.num_reused_tokens == sum(n for _, n in spans) and outcome.computed_rows == len(ids)
    assert tokens == engine.generate([ids], params)[0].token_ids
    engine.check_integrity()
    assert engine.num_used_blocks == 0 or engine.pool.num_free + engine.num_used_blocks == engine.pool.num_blocks


def test_in_context_variants_are_reused_exactly(engine):
    ids, spans = _chat(engine, DOCS, "what runs north?")
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 24), dtype=engine.config.kv_torch_dtype))
    for meta, kv in cache.compute_in_context(engine, [ids[s:s + n] for s, n in spans]):
        cache.store.put(meta, kv)
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    plan, outcome, tokens = _generate_blended(engine, cache, ids, spans, params)
    assert [b.fraction for b in plan.budgets] == [0.0, 0.0, 0.0]
    assert tokens == engine.generate([ids], params)[0].token_ids
    forced = len(ids) - plan.num_reused_tokens  # the chat head and the question; tiny has 2 layers, layer 0 runs in full
    assert outcome.computed_rows == (len(ids) + forced) / 2
    stats = [meta.stats for meta, _ in cache.compute_in_context(engine, [ids[s:s + n] for s, n in spans])]
    assert stats[0].inter == () and len(stats[2].inter) == 2 and all(w > 0 for w in stats[2].inter)
    assert torch.tensor(stats[2].token_inter).sum() == pytest.approx(sum(stats[2].inter), rel=1e-6)


def test_chunks_computed_after_a_given_prefix_are_exact_there(engine):
    """A chunk computed after the prompt head (not the special prefix) is reused as is where it sits first."""
    head = engine.tokenizer.encode("Read these passages:", add_special_tokens=True)
    chunk = engine.tokenizer.encode(DOCS[0] + "\n\n", add_special_tokens=False)
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 24), dtype=engine.config.kv_torch_dtype), prefix=head)
    meta, kv = cache.compute_alone(engine, chunk)
    assert meta.start == len(head) and kv.positions.tolist() == list(range(len(head), len(head) + len(chunk)))
    cache.store.put(meta, kv)
    ids = head + chunk + engine.tokenizer.encode("where?", add_special_tokens=False)
    plan = cache.plan(ids, [(len(head), len(chunk))])
    assert [b.fraction for b in plan.budgets] == [0.0]
