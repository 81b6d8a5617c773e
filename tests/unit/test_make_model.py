"""splitserve.modelgen: generated folders load in HF transformers and behave like real checkpoints."""

from __future__ import annotations

import argparse
import json
import random
import threading
import unicodedata

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from splitserve.commands import make_model as make_model_command
from splitserve.modelgen import FORMAT_VERSION, SPECIAL_IDS, ensure_model, get_preset, make_model, write_config_files
from splitserve.modelgen.corpus import load_corpus
from splitserve.modelgen.tokenizer import _trained_json

PARAM_BOUNDS = {"tiny": (100_000, 1_000_000), "qwen2-tiny": (100_000, 1_000_000), "small": (20_000_000, 35_000_000)}
FIXTURES = {"tiny": "tiny_model", "qwen2-tiny": "qwen2_tiny_model", "small": "small_model"}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote hannibal and scipio?"}]


def _strings() -> list[str]:
    rng = random.Random(0)
    alphabet = "abcXYZ 0123456789\n\t  .,!?'\"-éüßñ日本語中文한국어Привет🙂🚀👍🏽e\u0301ﬁ\u200b<|>"
    fixed = ["", " ", "The capital of France is", "hello 🙂 日本語", "12345 1999 3.14", "don't I'LL we've",
             "<|im_start|>user\nhi<|im_end|>", "<|begin_of_text|>x<|end_of_text|><|pad|><|endoftext|>", "  lead\n\n\ttabs  "]
    return fixed + [line[:300] for line in load_corpus()[:20]] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)
    ]


def _load_hf(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("preset", ["tiny", "qwen2-tiny", "small"])
def test_preset_loads_in_hf_with_its_shape(preset, request):
    model_dir = request.getfixturevalue(FIXTURES[preset])
    model, tok = _load_hf(model_dir)
    spec = get_preset(preset)
    num_params = sum(p.numel() for p in model.parameters())
    low, high = PARAM_BOUNDS[preset]
    assert num_params == spec.num_params() and low <= num_params <= high
    assert type(model).__name__ == spec.architecture
    assert model.config.tie_word_embeddings == spec.tie_word_embeddings
    assert model.config.max_position_embeddings == spec.max_position_embeddings
    assert len(tok) == spec.vocab_size == model.config.vocab_size
    assert tok.bos_token_id == SPECIAL_IDS["<|begin_of_text|>"] == model.config.bos_token_id


def test_tiny_uses_llama3_rope_scaling(tiny_model):
    rope = AutoConfig.from_pretrained(tiny_model).rope_parameters
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
    assert rope["original_max_position_embeddings"] == 256


def test_qwen2_has_qkv_bias_and_no_lm_head(qwen2_tiny_model):
    names = load_file(qwen2_tiny_model / "model.safetensors").keys()
    assert "model.layers.0.self_attn.q_proj.bias" in names and "model.layers.0.self_attn.o_proj.bias" not in names
    assert "lm_head.weight" not in names


@pytest.mark.parametrize("preset", ["tiny", "qwen2-tiny"])
def test_greedy_output_is_not_one_repeated_token(preset, request):
    model, tok = _load_hf(request.getfixturevalue(FIXTURES[preset]))
    for prompt in ["the first edition of the play contained", "Hello", load_corpus()[3][:200]]:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
        assert len(set(out[0, ids.shape[1]:].tolist())) >= 12, prompt


@pytest.mark.parametrize("preset", ["tiny", "qwen2-tiny"])
def test_tokenizers_and_hf_give_identical_ids(preset, request):
    model_dir = request.getfixturevalue(FIXTURES[preset])
    raw, hf = Tokenizer.from_file(str(model_dir / "tokenizer.json")), AutoTokenizer.from_pretrained(model_dir)
    for text in _strings():
        ids = raw.encode(text).ids
        assert ids == hf(text).input_ids, text
        assert ids[0] == SPECIAL_IDS["<|begin_of_text|>"]
        assert raw.decode(ids) == hf.decode(ids, skip_special_tokens=True), text


@pytest.mark.parametrize("preset", ["tiny", "qwen2-tiny"])
def test_decode_inverts_encode(preset, request):
    raw = Tokenizer.from_file(str(request.getfixturevalue(FIXTURES[preset]) / "tokenizer.json"))
    nfc = preset == "qwen2-tiny"  # Qwen2 normalizes to NFC first
    for text in _strings():
        expected = unicodedata.normalize("NFC", text) if nfc else text
        assert raw.decode(raw.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == expected


def test_chat_template_renders_in_hf(tiny_model):
    hf = AutoTokenizer.from_pretrained(tiny_model)
    text = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWho wrote hannibal and scipio?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not hf.apply_chat_template(MESSAGES, tokenize=False).endswith("assistant\n")
    ids = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
    raw = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    assert ids == raw.encode(text, add_special_tokens=False).ids
    assert ids[:2] == [SPECIAL_IDS["<|begin_of_text|>"], SPECIAL_IDS["<|im_start|>"]]


def test_generation_config_stops_on_both_eos_tokens(tiny_model):
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [SPECIAL_IDS["<|end_of_text|>"], SPECIAL_IDS["<|im_end|>"]]
    assert gen["do_sample"] is False


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_model):
    again = make_model("tiny", tmp_path / "again", seed=0)
    other = make_model("tiny", tmp_path / "other", seed=1)
    for name in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (tiny_model / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()


def test_tokenizer_training_is_deterministic():
    assert _trained_json.__wrapped__(1024, "llama") == _trained_json(1024, "llama")


def test_sharded_folder_loads_in_hf_with_the_same_weights(tmp_path, tiny_model):
    out = make_model("tiny", tmp_path / "sharded", max_shard_bytes=300_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 3 and not (out / "model.safetensors").exists()
    single = load_file(tiny_model / "model.safetensors")
    assert set(index["weight_map"]) == set(single)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    hf_state = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, tensor in single.items():
        assert torch.equal(hf_state[name], tensor), name


def test_rewrite_drops_old_shards(tmp_path):
    out = make_model("tiny", tmp_path / "m", max_shard_bytes=300_000)
    make_model("tiny", out)
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]


def test_bfloat16_storage(tmp_path):
    out = make_model("qwen2-tiny", tmp_path / "bf16", dtype="bfloat16")
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_unknown_preset_names_the_available_ones(tmp_path):
    with pytest.raises(KeyError, match="available: tiny, qwen2-tiny, small, 1b"):
        make_model("huge", tmp_path / "m")
    with pytest.raises(KeyError, match="unknown model preset 'huge'"):
        ensure_model("huge", cache_root=tmp_path)
    with pytest.raises(ValueError, match="allowed: float32, bfloat16, float16"):
        make_model("tiny", tmp_path / "m", dtype="int8")


def test_1b_config_matches_llama_3_2_1b(tmp_path):
    spec = get_preset("1b")
    assert 1_200_000_000 < spec.num_params() < 1_300_000_000 and spec.dtype == "bfloat16"
    out = write_config_files("1b", tmp_path / "1b")
    config = AutoConfig.from_pretrained(out)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (128256, 2048, 16)
    assert config.rope_parameters["factor"] == 32.0 and config.rope_parameters["rope_theta"] == 500000.0
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == spec.num_params()
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 8192 and tok("hi there").input_ids == Tokenizer.from_file(str(out / "tokenizer.json")).encode("hi there").ids


def test_ensure_model_builds_once_even_when_raced(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_model("tiny", cache_root=tmp_path, seed=3))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0].name == f"tiny-s3-v{FORMAT_VERSION}"
    assert [p.name for p in (tmp_path / "models").iterdir()] == [results[0].name]  # no temporary folders left
    mtime = (results[0] / "model.safetensors").stat().st_mtime_ns
    assert ensure_model("tiny", cache_root=tmp_path, seed=3) == results[0]
    assert (results[0] / "model.safetensors").stat().st_mtime_ns == mtime


def test_make_model_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    make_model_command.register(parser.add_subparsers())
    args = parser.parse_args(["make-model", "--preset", "tiny", "--out", str(tmp_path / "m"), "--seed", "2",
                              "--dtype", "float16", "--max-shard-bytes", "300000"])
    assert args.func(args) == 0
    assert f"{tmp_path / 'm'}  (tiny: 205,120 parameters, float16)" in capsys.readouterr().out
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    with pytest.raises(SystemExit):
        parser.parse_args(["make-model", "--preset", "huge", "--out", str(tmp_path)])
