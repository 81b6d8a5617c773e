"""Embeddings (pooling.py) against HF transformers' `last_hidden_state`: last-row and mean pooling, with
and without L2 normalization, prompts prefilled in chunks beside generating requests, after a preemption,
and never pooled from the prefix cache where every row counts."""

import pytest
import torch

from splitserve.engine import Engine, EngineConfig, Pooling, PoolingParams, SamplingParams
from tests.support.hf_reference import hf_model
from tests.unit.test_engine_vs_hf import random_prompts

ATOL = 1e-4


def hf_embedding(model, prompt_ids: list[int], pooling: PoolingParams) -> torch.Tensor:
    with torch.inference_mode():
        hidden = model.model(torch.tensor([prompt_ids])).last_hidden_state[0].float()
    vector = hidden.mean(dim=0) if pooling.kind == Pooling.MEAN else hidden[-1]
    return torch.nn.functional.normalize(vector, dim=0) if pooling.normalize else vector


def assert_equal_hf(model, prompts, vectors, pooling):
    for prompt, vector in zip(prompts, vectors):
        ref = hf_embedding(model, prompt, pooling)
        assert len(vector) == ref.numel()
        assert torch.allclose(torch.tensor(vector), ref, atol=ATOL), (len(prompt), pooling)


@pytest.mark.parametrize("pooling", [PoolingParams(Pooling.LAST), PoolingParams(Pooling.MEAN),
                                     PoolingParams("mean", normalize=False), PoolingParams("last", normalize=False)])
@pytest.mark.parametrize("preset_fixture", ["tiny_model", "qwen2_tiny_model"])
def test_chunked_batch_equals_hf(preset_fixture, pooling, request):
    model_dir = request.getfixturevalue(preset_fixture)
    engine = Engine(model_dir, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=24))
    prompts = random_prompts(engine.tokenizer.vocab_size)
    assert_equal_hf(hf_model(str(model_dir)), prompts, engine.embed(prompts, pooling), pooling)
    engine.check_integrity()
    assert engine.num_used_blocks == 0


def test_beside_generating_requests_both_are_unchanged(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=24))
    prompts = random_prompts(engine.tokenizer.vocab_size)
    alone = engine.generate(prompts[:4], SamplingParams(max_tokens=8, ignore_eos=True))
    generating = [engine.add_request(p, SamplingParams(max_tokens=8, ignore_eos=True)) for p in prompts[:4]]
    pooling = PoolingParams(Pooling.MEAN)
    embedding = {engine.add_embedding(p, pooling): p for p in prompts[4:]}
    tokens, vectors = {rid: [] for rid in generating}, {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id in tokens:
                tokens[out.request_id] += out.new_token_ids
            elif out.finished:
                assert out.finish_reason == "pooled" and not out.new_token_ids
                vectors[out.request_id] = out.embedding
    assert [tokens[rid] for rid in generating] == [c.token_ids for c in alone]
    assert_equal_hf(hf_model(str(tiny_model)), list(embedding.values()), [vectors[r] for r in embedding], pooling)


def test_mean_pooling_never_reads_the_prefix_cache_last_may(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=64))
    prompt = random_prompts(engine.tokenizer.vocab_size)[6]
    engine.generate([prompt], SamplingParams(max_tokens=1))  # its blocks are now in the prefix cache
    model = hf_model(str(tiny_model))
    for kind, cached in ((Pooling.MEAN, False), (Pooling.LAST, True)):
        pooling = PoolingParams(kind)
        out = run_to_end(engine, engine.add_embedding(prompt, pooling))
        assert (out.num_cached_tokens > 0) == cached, kind
        assert_equal_hf(model, [prompt], [out.embedding], pooling)


def run_to_end(engine: Engine, rid: str):
    while True:
        for out in engine.step():
            if out.request_id == rid and out.finished:
                return out


def test_a_preempted_request_pools_its_prompt_once(tiny_model):
    # 10 blocks of 4 tokens: the generating request grows into the embedding's blocks mid-prompt and preempts it
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=10, max_num_batched_tokens=8))
    preempted = []
    preempt = engine.scheduler._preempt
    engine.scheduler._preempt = lambda req: (preempted.append(req.request_id), preempt(req))
    generating = engine.add_request(list(range(2, 10)), SamplingParams(max_tokens=30, ignore_eos=True))
    prompt = random_prompts(engine.tokenizer.vocab_size)[5]  # 31 tokens
    pooling = PoolingParams(Pooling.MEAN)
    out = run_to_end(engine, engine.add_embedding(prompt, pooling))
    assert preempted and set(preempted) == {out.request_id}
    assert_equal_hf(hf_model(str(tiny_model)), [prompt], [out.embedding], pooling)
    while engine.has_unfinished():
        engine.step()
    assert generating not in engine.requests and engine.num_used_blocks == 0


def test_limits_and_bad_pooling(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=8, max_model_len=64))
    [vector] = engine.embed([list(range(2, 34))])  # 32 tokens: the whole KV pool, nothing generated
    assert len(vector) == engine.model_config.hidden_size
    with pytest.raises(ValueError, match="exceeds the KV pool"):
        engine.add_embedding(list(range(2, 35)))
    with pytest.raises(ValueError, match="empty"):
        engine.add_embedding([])
    with pytest.raises(ValueError, match="pooling must be one of last, mean"):
        PoolingParams("cls")
    assert not engine.has_unfinished()


def test_a_generating_request_goes_before_queued_and_running_embeddings(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=16))
    prompts = random_prompts(engine.tokenizer.vocab_size)
    embeddings = [engine.add_embedding(prompts[5]) for _ in range(4)]  # 31 tokens each: 2 steps apiece at least
    engine.step()  # the first embedding runs: 16 of its tokens
    chat = engine.add_request(prompts[3], SamplingParams(max_tokens=2, ignore_eos=True))  # 16 tokens
    first = [out for out in engine.step() if out.request_id == chat]
    assert first and len(first[0].new_token_ids) == 1  # prefilled whole in the next step, the embeddings waited
    vectors = {}
    while engine.has_unfinished():
        vectors.update((o.request_id, o.embedding) for o in engine.step() if o.embedding is not None)
    assert set(vectors) == set(embeddings)
    assert_equal_hf(hf_model(str(tiny_model)), [prompts[5]] * 4, list(vectors.values()), PoolingParams())


def test_embeddings_take_at_most_their_share_of_a_step(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=64,
                                             max_embedding_tokens_per_step=8))
    prompts = random_prompts(engine.tokenizer.vocab_size)
    for prompt in prompts[4:6]:  # 17 and 31 tokens
        engine.add_embedding(prompt)
    engine.add_request(prompts[3], SamplingParams(max_tokens=4, ignore_eos=True))
    steps, schedule = [], engine.scheduler.schedule

    def recorded():
        plan = schedule()
        steps.append((sum(c.num_new_tokens for c in plan.chunks if c.request.pooling is not None),
                      sum(c.num_new_tokens for c in plan.chunks if c.request.pooling is None)))
        return plan
    engine.scheduler.schedule = recorded
    while engine.has_unfinished():
        engine.step()
    assert max(e for e, _ in steps) == 8 and steps[0] == (8, 16)  # the chat prompt whole, embeddings 8 tokens
    assert sum(e for e, _ in steps) == 17 + 31
    with pytest.raises(ValueError, match="max_embedding_tokens_per_step"):
        EngineConfig(max_embedding_tokens_per_step=0)


def test_an_embedding_of_lower_priority_value_preempts_a_running_batch_request(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=64, max_num_seqs=1))
    background = engine.add_request(list(range(2, 10)), SamplingParams(max_tokens=30, ignore_eos=True, priority=1))
    engine.step()
    prompt = random_prompts(engine.tokenizer.vocab_size)[1]
    out = run_to_end(engine, engine.add_embedding(prompt, PoolingParams(priority=0)))
    assert background in engine.requests and not engine.requests[background].is_finished  # it waited
    assert_equal_hf(hf_model(str(tiny_model)), [prompt], [out.embedding], PoolingParams())
    while engine.has_unfinished():
        engine.step()
    with pytest.raises(ValueError, match="priority must be an integer"):
        PoolingParams(priority=2**31)
