"""The real model: the engine on SmolLM2-135M-Instruct == HF transformers' own loading of its GGUF.

Where g++ is, the engine runs the linears of up to 16 rows over the GGUF's own Q4_1/Q8_0 blocks
(cpu_linear.py), so these tests check those kernels against HF too.

Weights equal, prompt ids equal, greedy 32 tokens and top-5 logprobs within 1e-3 (fp32) for a
batch prefilled in chunks; greedy 8 for one prompt of 2,000 tokens; a chat answer ends at
`<|im_end|>`.
"""

import pytest

from splitserve.engine import Engine, EngineConfig, SamplingParams, Tokenizer
from splitserve.engine.cpu_linear import PackedLinear
from tests.support.hf_reference import assert_matches_hf, greedy_with, hf_model
from tests.unit.test_quant_linear import HAS_TOOLCHAIN

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Wie spät ist es?",
             "List three colours.", "Explain gravity to a child in one sentence.", "¿Qué es un río?"]
TEXTS = QUESTIONS + ["Hello, world!  Two  spaces\nand\ttabs", "café naïve — ünïcode 東京 🙂", "<|im_start|>user\nhi<|im_end|>",
                     "def f(x):\n    return x * 2", "It's a test: don't stop; they'll see.", "   leading spaces"]
MAX_NEW = 32


@pytest.fixture(scope="module")
def hf(smollm2_hf_reference):
    return hf_model(str(smollm2_hf_reference))


def linear_kinds(engine) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for module in engine.model.modules():
        if isinstance(module, PackedLinear) and module.block_kernels:
            assert len(module.block_kernels) == 2  # dot and panel: every SmolLM2 shape has groups of 16
            kinds[module.blocks.kind] = kinds.get(module.blocks.kind, 0) + 1
    return kinds


def chat_ids(tokenizer, question: str) -> list[int]:
    return tokenizer.encode_chat([{"role": "user", "content": question}])


def test_weights_equal_hf_dequantization(smollm2_model, smollm2_hf_reference):
    from safetensors.torch import load_file

    ours, ref = (load_file(str(d / "model.safetensors")) for d in (smollm2_model, smollm2_hf_reference))
    assert ours.keys() == ref.keys()
    for name, tensor in ours.items():
        assert tensor.shape == ref[name].shape, name
        assert (tensor - ref[name]).abs().max().item() < 1e-6, name


def test_prompt_ids_equal_hf(smollm2_model, smollm2_hf_reference):
    from transformers import AutoTokenizer

    ours, ref = Tokenizer.from_dir(smollm2_model), AutoTokenizer.from_pretrained(smollm2_hf_reference)
    for text in TEXTS:
        assert ours.encode(text) == ref(text)["input_ids"], text
        assert ours.decode(ours.encode(text)) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")


def test_digits_are_split_one_by_one_as_llama_cpp_and_smollm2_do(smollm2_model):
    """The one place we part from transformers' GGUF tokenizer, which keeps "2024" whole."""
    tok = Tokenizer.from_dir(smollm2_model)
    assert [tok.decode([i]) for i in tok.encode("year 2024")] == ["year", " ", "2", "0", "2", "4"]


def test_greedy_batch_with_chunked_prefill_equals_hf(smollm2_model, hf):
    engine = Engine(smollm2_model, EngineConfig(block_size=16, num_blocks=128, max_num_batched_tokens=48))
    if HAS_TOOLCHAIN:  # decode batches (4 rows) and the last token's lm_head go through the GGUF's own blocks
        assert linear_kinds(engine) == {"q4_1": 120, "q8_0": 1}
    prompts = [chat_ids(engine.tokenizer, q) for q in QUESTIONS[:4]]
    results = engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True, logprobs=5))
    for prompt, result in zip(prompts, results):
        assert_matches_hf(result.token_ids, result.logprobs, *greedy_with(hf, prompt, MAX_NEW))
    engine.check_integrity()
    assert engine.num_used_blocks == 0


def test_prompt_of_over_2000_tokens_equals_hf(smollm2_model, hf):
    from splitserve.modelgen.corpus import load_corpus

    engine = Engine(smollm2_model, EngineConfig(block_size=16, num_blocks=160, max_num_batched_tokens=512))
    passages = " ".join(load_corpus()[:40])
    prompt = chat_ids(engine.tokenizer, f"{passages}\n\nSummarize the passages above.")[-2000:]
    assert len(prompt) == 2000
    result = engine.generate([prompt], SamplingParams(max_tokens=8, ignore_eos=True, logprobs=5))[0]
    assert_matches_hf(result.token_ids, result.logprobs, *greedy_with(hf, prompt, 8))


def test_chat_answer_is_sensible_and_ends_at_im_end(smollm2_model):
    engine = Engine(smollm2_model, EngineConfig(num_blocks=64))
    im_end = engine.tokenizer.backend.token_to_id("<|im_end|>")
    assert im_end in engine.tokenizer.eos_token_ids
    result = engine.generate([chat_ids(engine.tokenizer, QUESTIONS[0])], SamplingParams(max_tokens=48))[0]
    assert "Paris" in result.text
    assert result.finish_reason == "stop" and result.token_ids[-1] == im_end


def test_penalized_greedy_equals_hf(smollm2_model, smollm2_hf_reference):
    """Repetition and frequency penalties on the real model, against HF generate's own repetition processor
    (and OpenAI's formula as a logits processor); unpenalized, this answer loops within 32 tokens."""
    from tests.unit.test_sampling_penalties import hf_penalized

    engine = Engine(smollm2_model, EngineConfig(block_size=16, num_blocks=64))
    prompt = chat_ids(engine.tokenizer, "Write a short poem about the sea.")
    params = SamplingParams(max_tokens=MAX_NEW, ignore_eos=True, logprobs=5, repetition_penalty=1.3,
                            frequency_penalty=0.3)
    result = engine.generate([prompt], params)[0]
    assert_matches_hf(result.token_ids, result.logprobs, *hf_penalized(smollm2_hf_reference, prompt, MAX_NEW, params))
    assert result.token_ids != engine.generate([prompt], SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))[0].token_ids


def test_prompt_logprobs_equal_hf(smollm2_model, hf):
    """Every prompt token's logprob and top-5 (what OpenAI's echo with logprobs returns, how lm-evaluation-harness
    scores a text), the prompt prefilled in 32-token chunks."""
    from tests.support.hf_reference import assert_prompt_logprobs_match_hf

    engine = Engine(smollm2_model, EngineConfig(block_size=16, num_blocks=64, max_num_batched_tokens=32))
    prompt = chat_ids(engine.tokenizer, "Explain gravity to a child in one sentence.") + \
        engine.tokenizer.encode("Gravity is the force that pulls things down toward the ground, like when you drop a ball.")
    result = engine.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=5))[0]
    assert_prompt_logprobs_match_hf(prompt, result.prompt_logprobs, hf)
    assert len(prompt) > 32


def test_embeddings_equal_hf_last_hidden_state(smollm2_model, hf):
    """/v1/embeddings' vectors on the real model: last-token and mean pooling of HF's last_hidden_state (after the
    final norm), L2-normalized, the texts prefilled in 16-token chunks side by side."""
    import torch

    from splitserve.engine import PoolingParams
    from tests.unit.test_embeddings import hf_embedding

    engine = Engine(smollm2_model, EngineConfig(block_size=16, num_blocks=64, max_num_batched_tokens=16))
    prompts = [engine.tokenizer.encode(text) for text in TEXTS[:6]]
    for kind in ("last", "mean"):
        pooling = PoolingParams(kind)
        for prompt, vector in zip(prompts, engine.embed(prompts, pooling)):
            ref = hf_embedding(hf, prompt, pooling)
            assert torch.nn.functional.cosine_similarity(torch.tensor(vector), ref, dim=0) > 1 - 1e-6, kind
            assert (torch.tensor(vector) - ref).abs().max() < 1e-4, kind


def test_a_lora_adapter_on_the_real_model_equals_peft(smollm2_model, smollm2_hf_reference, tmp_path):
    """PEFT's adapter (random, every projection) on SmolLM2 against PEFT's own model over HF transformers, in a
    batch beside the base model: the adapter's rows get its deltas, the base model's rows none."""
    from tests.support.lora import peft_model, write_peft_adapter

    adapter = write_peft_adapter(smollm2_hf_reference, tmp_path / "adapter", seed=7, rank=8, alpha=16)
    engine = Engine(smollm2_model, EngineConfig(block_size=16, num_blocks=64, max_num_batched_tokens=48,
                                                lora_modules=(("a", str(adapter)),)))
    prompts = [chat_ids(engine.tokenizer, q) for q in QUESTIONS[:2]]
    params = [SamplingParams(max_tokens=16, ignore_eos=True, logprobs=5, lora=name) for name in ("a", None)]
    with_adapter, base = engine.generate(prompts, params)
    reference = greedy_with(peft_model(str(smollm2_hf_reference), str(adapter)), prompts[0], 16)
    assert_matches_hf(with_adapter.token_ids, with_adapter.logprobs, *reference)
    plain = engine.generate([prompts[0]], params[1])[0]
    assert max(abs(a[0] - b[0]) for a, b in zip(with_adapter.logprobs, plain.logprobs)) > 0.05  # it changes the model
    assert_matches_hf(base.token_ids, base.logprobs, *greedy_with(hf_model(str(smollm2_hf_reference)), prompts[1], 16))
