"""Prefill-only and decode-only modes: a prompt prefilled in one engine and decoded in another
gives exactly the single-engine output (the in-process version of the disaggregated path)."""

import random

import pytest
import torch

from splitserve.engine import Engine, EngineConfig, SamplingParams
from tests.support.lora import write_peft_adapter


def run_split(prefill: Engine, decode: Engine, prompt: list[int], params: SamplingParams,
              reuse: bool = False) -> list[int]:
    """reuse: the decode engine is given the prompt at reservation, takes what its prefix cache holds, and only the
    KV after that is copied."""
    rid = prefill.add_request(prompt, params, prefill_only=True, keep_blocks=True)
    outs = []
    while prefill.has_unfinished():
        outs += prefill.step()
    (first,) = [t for o in outs for t in o.new_token_ids]
    assert outs[-1].finish_reason == "prefilled"
    held = prefill.held_request(rid)
    assert decode.reserve(rid, len(prompt), prompt if reuse else None, params.cache_salt, params.lora) is not None
    skip = decode.reserved_cached_tokens(rid)
    slots = torch.tensor(prefill.runner.slots(held.block_ids, skip, len(prompt)))
    dst = torch.tensor(decode.runner.slots(decode.reserved[rid], skip, len(prompt)))
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


def test_a_conversations_next_turn_reuses_the_decode_engines_blocks_and_equals_the_single_engine(tiny_model):
    """Turn 2 repeats turn 1's prompt and answer: the decode engine reserves those blocks from its prefix cache, only
    the rest of the KV is copied in, and the tokens are the single engine's; a salted turn finds none of them."""
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=16)
    single, prefill, decode = Engine(tiny_model, cfg), Engine(tiny_model, cfg), Engine(tiny_model, cfg)
    params = SamplingParams(max_tokens=9, ignore_eos=True)
    rng = random.Random(2)
    first = [rng.randrange(5, 200) for _ in range(23)]
    answer = run_split(prefill, decode, first, params)
    second = first + answer + [7, 8, 9]
    assert decode.reserve("probe", len(second), second) is not None
    assert decode.reserved_cached_tokens("probe") == (len(first) + len(answer) - 1) // 4 * 4  # the last is not fed
    decode.cancel_reservation("probe")
    tokens = run_split(prefill, decode, second, params, reuse=True)
    assert tokens == single.generate([second], params)[0].token_ids
    assert decode.reserve("salted", len(second), second, "tenant") is not None
    assert decode.reserved_cached_tokens("salted") == 0
    decode.cancel_reservation("salted")
    for engine in (single, prefill, decode):
        engine.check_integrity()
        assert engine.num_used_blocks == 0


def test_a_lora_conversations_next_turn_reuses_the_blocks_of_the_adapter_as_loaded_there(tiny_model, tmp_path):
    """Prefill and decode engines load the adapter each (their own load ids): turn 2 under the adapter reserves turn
    1's blocks on the decode engine and equals the single engine; the base model and another load find none, and a
    reservation made under the adapter is refused to a request without it."""
    adapter = write_peft_adapter(tiny_model, tmp_path / "ahoy", seed=4)
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=16, lora_modules=(("ahoy", str(adapter)),))
    single, prefill, decode = Engine(tiny_model, cfg), Engine(tiny_model, cfg), Engine(tiny_model, cfg)
    params = SamplingParams(max_tokens=9, ignore_eos=True, lora="ahoy")
    first = [random.Random(3).randrange(5, 200) for _ in range(23)]
    second = first + run_split(prefill, decode, first, params) + [7, 8, 9]
    held = (len(second) - 4) // 4 * 4
    assert decode.reserve("base", len(second), second) is not None and decode.reserved_cached_tokens("base") == 0
    assert decode.reserve("lora", len(second), second, lora="ahoy") is not None
    assert decode.reserved_cached_tokens("lora") == held
    with pytest.raises(ValueError, match="another prompt, cache salt or LoRA adapter"):
        decode.admit_prefilled("lora", second, 3, SamplingParams(max_tokens=2))
    decode.cancel_reservation("base")
    assert run_split(prefill, decode, second, params, reuse=True) == single.generate([second], params)[0].token_ids
    decode.remove_adapter("ahoy")
    decode.add_adapter(decode.read_adapter("ahoy", adapter))  # loaded again: shares nothing
    assert decode.reserve("again", len(second), second, lora="ahoy") is not None
    assert decode.reserved_cached_tokens("again") == 0
    decode.cancel_reservation("again")
    with pytest.raises(ValueError, match="unknown LoRA adapter"):
        decode.reserve("gone", len(second), second, lora="other")
    for engine in (single, prefill, decode):
        engine.check_integrity()
        assert engine.num_used_blocks == 0


def test_a_reuse_for_another_prompt_is_refused_and_frees_the_reservation(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=64))
    prompt = list(range(10, 30))
    engine.generate([prompt], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="the prompt has 20 tokens"):
        engine.reserve("r", 21, prompt)
    assert engine.num_used_blocks == 0 and "r" not in engine.reserved
    assert engine.reserve("r", 20, prompt) is not None and engine.reserved_cached_tokens("r") == 16
    other = prompt[:5] + [99] + prompt[6:]
    with pytest.raises(ValueError, match="reserved its first 16 prompt tokens"):
        engine.admit_prefilled("r", other, 3, SamplingParams(max_tokens=2))
    assert engine.num_used_blocks == 0 and "r" not in engine.reserved
    engine.check_integrity()


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
