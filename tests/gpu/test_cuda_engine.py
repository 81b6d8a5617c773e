"""The engine on CUDA matches HF transformers on CUDA, and with a 16-bit KV cache the CPU engine with the same cache
(skipped without a GPU)."""

import random

import pytest
import torch

from splitserve.engine import Engine, EngineConfig, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_tiny_fp32_on_cuda_matches_hf(tiny_model):
    from transformers import AutoModelForCausalLM

    engine = Engine(tiny_model, EngineConfig(device="cuda", num_blocks=256, block_size=4, max_num_batched_tokens=24))
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).to("cuda").eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(5, 500) for _ in range(n)] for n in (1, 9, 33)]
    for prompt, result in zip(prompts, engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))):
        out = hf.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                          pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device="cuda"))
        assert result.token_ids == out[0, len(prompt):].tolist()
    engine.check_integrity()


def test_a_16_bit_kv_cache_on_cuda_decodes_as_the_cpu_engine_with_the_same_cache(tiny_model):
    """--kv-cache-dtype float16 under the fp32 model on CUDA (SDPA over the gathered blocks, widened to fp32): the
    same tokens, and logprobs within fp32 rounding, as the CPU engine with the same cache (its native kernel)."""
    config = dict(kv_cache_dtype="float16", num_blocks=256, block_size=4, max_num_batched_tokens=24)
    rng = random.Random(1)
    prompts = [[rng.randrange(5, 500) for _ in range(n)] for n in (1, 9, 33)]
    params = SamplingParams(max_tokens=16, ignore_eos=True, logprobs=1)
    cuda = Engine(tiny_model, EngineConfig(device="cuda", **config)).generate(prompts, params)
    cpu = Engine(tiny_model, EngineConfig(**config)).generate(prompts, params)
    assert [r.token_ids for r in cuda] == [r.token_ids for r in cpu]
    for a, b in zip(cuda, cpu):
        assert [lp for lp, _ in a.logprobs] == pytest.approx([lp for lp, _ in b.logprobs], abs=1e-3)
