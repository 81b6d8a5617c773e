"""--kv-cache-dtype: an fp32 model keeping its KV cache in float16 or bfloat16. The cache holds twice the tokens in
the same bytes; decode attention reads the 16-bit values in place (the native kernel) exactly as SDPA reads them
gathered and widened; what the rounding changes is small on the tiny model and, teacher-forced on SmolLM2, keeps the
fp32 cache's next token almost everywhere (the disaggregated path: tests/integration/test_disaggregated.py)."""

import random

import pytest

from splitserve.engine import Engine, EngineConfig, SamplingParams

PARAMS = SamplingParams(max_tokens=16, ignore_eos=True, logprobs=1)


def prompts(n=6, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(5, 1000) for _ in range(rng.randrange(3, 90))] for _ in range(n)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_16_bit_cache_holds_twice_the_tokens_and_decodes_as_sdpa_reads_it(tiny_model, dtype):
    fp32 = Engine(tiny_model, EngineConfig(kv_cache_bytes=1 << 20, max_num_batched_tokens=32))
    half = Engine(tiny_model, EngineConfig(kv_cache_bytes=1 << 20, max_num_batched_tokens=32, kv_cache_dtype=dtype))
    assert half.pool.num_blocks == 2 * fp32.pool.num_blocks and half.cache.k[0].dtype.itemsize == 2
    assert half.config.kv_dtype == dtype and fp32.config.kv_dtype == "float32"
    native = half.generate(prompts(), PARAMS)  # 32-token steps: long prompts also read earlier chunks' KV
    half.runner.native_decode = False  # SDPA over the gathered blocks, widened to fp32
    gathered = half.generate(prompts(), PARAMS)
    assert [o.token_ids for o in native] == [o.token_ids for o in gathered]
    for a, b in zip(native, gathered):
        assert [lp for lp, _ in a.logprobs] == pytest.approx([lp for lp, _ in b.logprobs], abs=1e-4)
    exact = fp32.generate(prompts(), PARAMS)
    differences = [abs(x[0] - y[0]) for a, b in zip(native, exact) for x, y in zip(a.logprobs, b.logprobs)]
    assert 0 < max(differences) < 0.05  # rounded, and only a little


@pytest.mark.slow
def test_smollm2_with_a_16_bit_cache_keeps_the_fp32_caches_next_tokens(smollm2_model):
    """Teacher-forced on the fp32 cache's own greedy answers (in 16-token chunks, so every chunk attends to the
    earlier ones through the cache): the 16-bit cache's top token agrees at >= 97% of positions and the chosen
    token's logprob moves little on average."""
    from router.front.intake import Frontend

    frontend = Frontend.from_model_dir(smollm2_model)
    questions = ["What is the capital of France?", "Write a short poem about the sea.",
                 "Explain photosynthesis in two sentences.", "Give three tips for learning a language."]
    chats = [frontend.prompt_ids(messages=[{"role": "user", "content": q}]) for q in questions]
    fp32 = Engine(smollm2_model, EngineConfig(max_num_batched_tokens=16))
    answers = fp32.generate(chats, SamplingParams(max_tokens=48))
    forced = [c + a.token_ids for c, a in zip(chats, answers)]
    scoring = SamplingParams(max_tokens=1, prompt_logprobs=1)
    reference = fp32.generate(forced, scoring)
    for dtype in ("float16", "bfloat16"):
        half = Engine(smollm2_model, EngineConfig(max_num_batched_tokens=16, kv_cache_dtype=dtype))
        agree, moved = [], []
        for chat, ref, got in zip(chats, reference, half.generate(forced, scoring)):
            for r, g in list(zip(ref.prompt_logprobs, got.prompt_logprobs))[len(chat):]:
                agree.append(r[1][0][0] == g[1][0][0])
                moved.append(abs(r[0] - g[0]))
        assert sum(agree) / len(agree) >= 0.97, (dtype, sum(agree) / len(agree))
        assert sum(moved) / len(moved) < 0.02, (dtype, sum(moved) / len(moved))


def test_fp8_and_unknown_dtypes_are_refused_by_name():
    with pytest.raises(ValueError, match="fp8 KV caches are not supported"):
        EngineConfig(kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="kv_cache_dtype must be auto or one of"):
        EngineConfig(kv_cache_dtype="int4")
