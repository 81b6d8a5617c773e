"""`make_model`: a complete HF model folder from a preset, with random weights.

Folder: config.json, generation_config.json, tokenizer.json, tokenizer_config.json, and
model.safetensors (or shards + model.safetensors.index.json past max_shard_bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

from splitserve.modelgen.packaged import PACKAGED, make_packaged
from splitserve.modelgen.presets import DTYPES, ModelPreset, get_preset
from splitserve.modelgen.tokenizer import BOS, EOS, IM_END, PAD, SPECIAL_IDS, tokenizer_config, train_tokenizer
from splitserve.modelgen.weights import DEFAULT_MAX_SHARD_BYTES, INDEX_FILE, write_weights

EOS_IDS = [SPECIAL_IDS[EOS], SPECIAL_IDS[IM_END]]


def make_model(
    preset: str, out_dir, seed: int = 0, dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write the folder (created if missing, files overwritten) and return its path.

    A packaged real model (packaged.py) is converted from its GGUF; seed and sharding do not apply.
    """
    if preset in PACKAGED:
        return make_packaged(preset, out_dir, dtype)
    out = write_config_files(preset, out_dir, dtype)
    spec = get_preset(preset)
    for old in [*out.glob("model*.safetensors"), out / INDEX_FILE]:
        old.unlink(missing_ok=True)  # a rewrite may shard differently
    write_weights(spec, out, seed, dtype or spec.dtype, max_shard_bytes)
    return out


def write_config_files(preset: str, out_dir, dtype: str | None = None) -> Path:
    """Everything but the weights: enough for AutoConfig and AutoTokenizer."""
    spec = get_preset(preset)
    dtype = dtype or spec.dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", hf_config(spec, dtype))
    _write_json(out / "generation_config.json", generation_config())
    _write_json(out / "tokenizer_config.json", tokenizer_config(spec.max_position_embeddings))
    train_tokenizer(spec.tokenizer_vocab, spec.model_type).save(str(out / "tokenizer.json"))
    return out


def hf_config(spec: ModelPreset, dtype: str) -> dict:
    config = {
        "architectures": [spec.architecture],
        "model_type": spec.model_type,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": dict(spec.rope_scaling) if spec.rope_scaling else None,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "bos_token_id": SPECIAL_IDS[BOS],
        "eos_token_id": EOS_IDS,
        "pad_token_id": SPECIAL_IDS[PAD],
        "torch_dtype": dtype,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if spec.model_type == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=spec.num_layers)
    else:
        config.update(attention_bias=False, mlp_bias=False)
    return config


def generation_config() -> dict:
    return {"bos_token_id": SPECIAL_IDS[BOS], "eos_token_id": EOS_IDS, "pad_token_id": SPECIAL_IDS[PAD], "do_sample": False}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
