"""GGUF LoRA adapters (splitserve/engine/lora_gguf.py), as llama.cpp's own convert_lora_to_gguf.py wrote them from
PEFT adapters (tests/data/lora, made by scripts/make_gguf_lora_fixtures.py): the engine serving the GGUF file
generates what PEFT's model over HF transformers generates with the PEFT folder it came from, for a Llama model
(whose q/k rows the converter permutes) and a Qwen2 model (not permuted), in f32 and f16; files that are not a LoRA
of this model are refused by name."""

from pathlib import Path

import numpy as np
import pytest

from splitserve.engine import Engine, EngineConfig, ModelFormatError, SamplingParams
from tests.support.hf_reference import assert_matches_hf, greedy_with
from tests.support.lora import peft_model
from tests.unit.test_engine_vs_hf import random_prompts

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "lora"
STEPS = 8


def fixture(preset: str, name: str) -> Path:
    return FIXTURES / preset / name


@pytest.fixture(scope="module", params=["tiny", "qwen2-tiny"])
def served(request, tiny_model, qwen2_tiny_model):
    """(model folder, fixture preset, engine serving the PEFT folder and both GGUF conversions)."""
    preset = request.param
    model = tiny_model if preset == "tiny" else qwen2_tiny_model
    modules = tuple((name, str(fixture(preset, name))) for name in ("peft", "adapter-f32.gguf", "adapter-f16.gguf"))
    return model, preset, Engine(model, EngineConfig(block_size=4, num_blocks=128, lora_modules=modules))


def greedy(lora: str | None) -> SamplingParams:
    return SamplingParams(max_tokens=STEPS, ignore_eos=True, logprobs=5, lora=lora)


@pytest.mark.parametrize("name, atol", [("adapter-f32.gguf", 1e-3), ("adapter-f16.gguf", 2e-2)])
def test_a_gguf_adapter_generates_what_peft_generates_with_its_source(served, name, atol):
    model, preset, engine = served
    prompt = random_prompts(1024)[3]
    [ours] = engine.generate([prompt], greedy(name))
    reference = greedy_with(peft_model(str(model), str(fixture(preset, "peft"))), prompt, STEPS)
    assert_matches_hf(ours.token_ids, ours.logprobs, *reference, atol=atol)
    [base] = engine.generate([prompt], greedy(None))
    assert ours.token_ids != base.token_ids  # the adapter changes the answer


def test_the_f32_file_and_its_peft_folder_are_the_same_adapter(served):
    """Same tokens, logprobs equal to float rounding: the scale (alpha / r) and the un-permuted q/k rows are right."""
    _, _, engine = served
    prompts = random_prompts(1024)[:3]
    folder = engine.generate(prompts, greedy("peft"))
    gguf = engine.generate(prompts, greedy("adapter-f32.gguf"))
    for a, b in zip(folder, gguf):
        assert a.token_ids == b.token_ids
        assert max(abs(x[0] - y[0]) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def write_adapter(out: Path, source: Path, arch: str | None = None, kind: str = "adapter",
                  extra_kv: dict | None = None, extra_tensors: dict | None = None, alpha: float | None = None) -> str:
    """A copy of a fixture adapter with gguf's own writer, with one thing changed."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(out), arch or reader.fields["general.architecture"].contents())
    writer.add_type(kind)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", reader.fields["adapter.lora.alpha"].contents() if alpha is None else alpha)
    for key, value in (extra_kv or {}).items():
        writer.add_array(key, value)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data))
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(out)


def test_alpha_zero_means_scale_one_as_llama_cpp_reads_it(tiny_model, tmp_path):
    """llama.cpp's scale is alpha / r, or 1 when alpha is 0: the same adapter at alpha 0 and at alpha = r agree."""
    source = fixture("tiny", "adapter-f32.gguf")
    modules = (("zero", write_adapter(tmp_path / "zero.gguf", source, alpha=0.0)),
               ("rank", write_adapter(tmp_path / "rank.gguf", source, alpha=4.0)))
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, lora_modules=modules))
    prompt = random_prompts(1024)[1]
    zero, rank = (engine.generate([prompt], greedy(name))[0] for name in ("zero", "rank"))
    assert zero.token_ids == rank.token_ids and zero.logprobs == rank.logprobs


def test_norm_vectors_are_skipped_as_llama_cpp_skips_them(tiny_model, tmp_path):
    source = fixture("tiny", "adapter-f32.gguf")
    norm = {"blk.0.attn_norm.weight": np.ones(64, np.float32)}
    path = write_adapter(tmp_path / "norm.gguf", source, extra_tensors=norm)
    modules = (("norm", path), ("plain", str(source)))
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, lora_modules=modules))
    prompt = random_prompts(1024)[1]
    with_norm, plain = (engine.generate([prompt], greedy(name))[0] for name in ("norm", "plain"))
    assert with_norm.token_ids == plain.token_ids


@pytest.mark.parametrize("change, message", [
    (dict(arch="qwen2"), "an adapter of a 'qwen2' model; the model served is a LlamaForCausalLM"),
    (dict(kind="model"), "not a LoRA adapter \\(general.type 'model'"),
    (dict(extra_kv={"adapter.alora_invocation_tokens": [5, 6]}), "activated LoRA"),
    (dict(extra_tensors={"token_embd.weight.lora_a": np.zeros((4, 1024), np.float32)}), "token embeddings"),
    (dict(extra_tensors={"blk.5.attn_q.weight.lora_a": np.zeros((4, 64), np.float32)}), "layer 5; the model has 2"),
    (dict(extra_tensors={"blk.0.attn_q.weight.lora_x": np.zeros((4, 64), np.float32)}), "is not a LoRA weight"),
])
def test_files_that_are_not_a_lora_of_this_model_are_refused(tiny_model, tmp_path, change, message):
    path = write_adapter(tmp_path / "bad.gguf", fixture("tiny", "adapter-f32.gguf"), **change)
    with pytest.raises(ModelFormatError, match=message):
        Engine(tiny_model, EngineConfig(num_blocks=16, lora_modules=(("x", path),)))


def test_a_model_file_or_a_cut_file_is_refused(tiny_model, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(fixture("tiny", "adapter-f32.gguf").read_bytes()[:3000])
    with pytest.raises(ModelFormatError, match="truncated|corrupt"):
        Engine(tiny_model, EngineConfig(num_blocks=16, lora_modules=(("x", str(cut)),)))
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        Engine(tiny_model, EngineConfig(num_blocks=16, lora_modules=(("x", str(tmp_path / "weights.bin")),)))
