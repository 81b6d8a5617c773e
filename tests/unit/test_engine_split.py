"""Prefill-only and decode-only modes: a prompt prefilled in one engine and decoded in another
gives exactly the single-engine output (the in-process version of the disaggregated path)."""

import random

import pytest
import torch

from splitserve.engine import Engine, EngineConfig, SamplingParams


def run_split(prefill: Engine, decode: Engine, prompt: list[int], params: SamplingParams) -> list[int]:
    rid = prefill.add_request(prompt, params, prefill_only=True, keep_blocks=True)
    outs = []
    while prefill.has_unfinished():
        outs += prefill.step()
    (first,) = [t for o in outs for t in o.new_token_ids]
    assert outs[-1].finish_reason == "prefilled"
    held = prefill.held_request(rid)
    slots = torch.tensor(prefill.runner.slots(held.block_ids, 0, len(prompt)))
    assert decode.reserve(rid, len(prompt)) is not None
    dst = torch.tensor(decode.runner.slots(decode.reserved[rid], 0, len(prompt)))
    for layer in range(prefill.model_config.num_layers):
        kv = prefill.cache.read(layer, slots)  # [2, n, kv_heads, head_dim]
        decode.cache.write(layer, dst, kv[0], kv[1])
    prefill.release(rid)
    decode.admit_prefilled(rid, prompt, first, params)
    tokens = [first]
    while decode.has_unfinished():
        tokens += [t for o in decode.step() for t in o.new_token_ids]
    return tokens


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=10, ignore_eos=True),
    SamplingParams(max_tokens=10, ignore_eos=True, temperature=0.8, seed=7),
], ids=["greedy", "seeded"])
def test_split_equals_single_engine(tiny_model, params):
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=16)
    single, prefill, decode = Engine(tiny_model, cfg), Engine(tiny_model, cfg), Engine(tiny_model, cfg)
    rng = random.Random(0)
    for n in (1, 5, 17, 40):
        prompt = [rng.randrange(5, 200) for _ in range(n)]
        assert run_split(prefill, decode, prompt, params) == single.generate([prompt], params)[0].token_ids
    for engine in (single, prefill, decode):
        engine.check_integrity()
        assert engine.num_used_blocks == 0


def test_reservation_is_refused_when_blocks_run_out_and_cancel_frees(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=8))
    assert engine.reserve("a", 20) == [0, 1, 2, 3, 4]
    assert engine.reserve("b", 20) is None
    engine.cancel_reservation("a")
    engine.check_integrity()
    assert engine.num_used_blocks == 0


def test_decode_entries_past_max_num_seqs_wait_and_still_equal_the_single_engine(tiny_model):
    """A decode node runs at most --max-num-seqs requests at once: prefilled requests past it wait with their KV
    (no step holds more than 2 of the 4) and come out as the single engine's."""
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=16)
    single, prefill = Engine(tiny_model, cfg), Engine(tiny_model, cfg)
    decode = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=16, max_num_seqs=2))
    rng = random.Random(1)
    prompts = [[rng.randrange(5, 200) for _ in range(n)] for n in (3, 9, 14, 6)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    firsts = []
    for i, prompt in enumerate(prompts):  # all four prefilled and handed over before the decode node steps
        rid = prefill.add_request(prompt, params, request_id=f"r{i}", prefill_only=True, keep_blocks=True)
        outs = []
        while prefill.has_unfinished():
            outs += prefill.step()
        firsts.append(outs[-1].new_token_ids[0])
        held, dst = prefill.held_request(rid), decode.reserve(rid, len(prompt))
        src = torch.tensor(prefill.runner.slots(held.block_ids, 0, len(prompt)))
        dst = torch.tensor(decode.runner.slots(dst, 0, len(prompt)))
        for layer in range(prefill.model_config.num_layers):
            kv = prefill.cache.read(layer, src)
            decode.cache.write(layer, dst, kv[0], kv[1])
        prefill.release(rid)
        decode.admit_prefilled(rid, prompt, firsts[-1], params)
    assert len(decode.scheduler.running) == 2 and len(decode.scheduler.waiting) == 2
    tokens = {f"r{i}": [first] for i, first in enumerate(firsts)}
    while decode.has_unfinished():
        outs = decode.step()
        assert len(decode.scheduler.running) <= 2
        for out in outs:
            tokens[out.request_id] += out.new_token_ids
    assert [tokens[f"r{i}"] for i in range(4)] == [r.token_ids for r in single.generate(prompts, params)]
    decode.check_integrity()
    assert decode.num_used_blocks == 0
