"""GGUF files written from the tiny presets (F32, F16, Q8_0 with gguf's own writer and quantizer):
the engine loading the .gguf directly == HF transformers loading it with `gguf_file=`.

Prompt ids equal, greedy 32 tokens equal, top-5 logprobs within 1e-3 (fp32), for a batch
prefilled in chunks; `convert` writes a folder HF loads as is, with the same outputs.
"""

import pytest

from splitserve.engine import Engine, EngineConfig, SamplingParams
from tests.support.gguf_files import QUANT_TYPES, write_gguf
from tests.support.hf_reference import assert_matches_hf, greedy_with

TEXTS = ["The river starts in the mountains", "Hello, world!  Two  spaces\nand a newline", "café naïve — ünïcode 東京",
         "It's 2024; they'll pay $1,234.56"]
MAX_NEW = 32


def hf_from_gguf(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module", params=[(p, q) for p in ("tiny", "qwen2-tiny") for q in QUANT_TYPES],
                ids=lambda pq: f"{pq[0]}-{pq[1]}")
def gguf_case(request, tmp_path_factory):
    from splitserve.modelgen import ensure_model

    preset, quant = request.param
    path = write_gguf(ensure_model(preset), tmp_path_factory.mktemp("gguf") / f"{preset}-{quant}.gguf", quant)
    return path, *hf_from_gguf(path)


def test_prompt_ids_and_chat_prompts_equal_hf(gguf_case):
    path, _, hf_tok = gguf_case
    tok = Engine(path, EngineConfig(num_blocks=8)).tokenizer
    for text in TEXTS:
        assert tok.encode(text) == hf_tok(text)["input_ids"], text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXTS[2]}]
    assert tok.encode_chat(messages) == hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                                   return_dict=False)


def test_greedy_batch_with_chunked_prefill_equals_hf(gguf_case):
    path, hf, _ = gguf_case
    engine = Engine(path, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=24))
    prompts = [engine.tokenizer.encode(t) for t in TEXTS] + [list(range(5, 70))]
    results = engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True, logprobs=5))
    for prompt, result in zip(prompts, results):
        assert_matches_hf(result.token_ids, result.logprobs, *greedy_with(hf, prompt, MAX_NEW))
    engine.check_integrity()


def test_converted_folder_loads_in_hf_and_gives_the_same_tokens(gguf_case, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from splitserve.engine.gguf_convert import convert_gguf

    path, hf_gguf, hf_tok = gguf_case
    folder = convert_gguf(path, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(folder)(TEXTS[0])["input_ids"] == hf_tok(TEXTS[0])["input_ids"]
    prompt = hf_tok(TEXTS[1])["input_ids"]
    assert greedy_with(hf, prompt, 8)[0] == greedy_with(hf_gguf, prompt, 8)[0]
    result = Engine(folder, EngineConfig(num_blocks=64)).generate([prompt], SamplingParams(max_tokens=8, ignore_eos=True))
    assert result[0].token_ids == greedy_with(hf, prompt, 8)[0]


def test_bench_tokenizer_and_chunk_cache_fingerprint_accept_a_gguf_file(tiny_model, tmp_path):
    from splitserve.bench.prompts import load_tokenizer
    from splitserve.chunkcache.keys import model_fingerprint
    from splitserve.engine import Tokenizer

    path = write_gguf(tiny_model, tmp_path / "tiny.gguf", "F16")
    assert load_tokenizer(path).encode(TEXTS[0]) == Tokenizer.from_dir(tiny_model).encode(TEXTS[0])
    assert len(model_fingerprint(path)) == 16 and model_fingerprint(path) != model_fingerprint(tiny_model)


def test_a_gguf_file_is_served_under_its_name_without_the_suffix(tiny_model, tmp_path):
    from router.config import RouterConfig

    path = write_gguf(tiny_model, tmp_path / "tiny-q8.gguf", "Q8_0")
    assert RouterConfig(str(path)).model_name == "tiny-q8"
    assert RouterConfig(str(tiny_model)).model_name == tiny_model.name
    assert RouterConfig(str(path), served_model_name="mine").model_name == "mine"
