"""A GGUF file's model half: an HF-style config dict and HF-named fp tensors.

llama.cpp's converter stores Llama-family q and k rows permuted (each head's rotary halves
interleaved, for its own RoPE kernel); `hf_tensors` undoes that so the weights are in the HF
`rotate_half` layout the engine uses. Qwen2 files are stored unpermuted.
"""

from __future__ import annotations

import re
from typing import Iterator

import torch

from splitserve.engine.gguf_reader import GGUFFile

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
PERMUTED_ARCHITECTURES = ("llama",)
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
LAYER_NAMES = {  # llama.cpp's tensor of a layer -> the HF module it is (lora_gguf.py reads it too)
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_LAYER = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def architecture(gguf: GGUFFile) -> str:
    arch = gguf.require("general.architecture")
    if arch not in ARCHITECTURES:
        raise gguf.error(f"architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return arch


def hf_config(gguf: GGUFFile) -> dict:
    """config.json fields (transformers' names) from the `<arch>.*` metadata."""
    arch = architecture(gguf)
    key = lambda name: f"{arch}.{name}"  # noqa: E731
    heads = int(gguf.require(key("attention.head_count")))
    hidden = int(gguf.require(key("embedding_length")))
    config = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch,
        "vocab_size": _vocab_size(gguf, arch),
        "hidden_size": hidden,
        "intermediate_size": int(gguf.require(key("feed_forward_length"))),
        "num_hidden_layers": int(gguf.require(key("block_count"))),
        "num_attention_heads": heads,
        "num_key_value_heads": int(gguf.get(key("attention.head_count_kv"), heads)),
        "head_dim": int(gguf.get(key("attention.key_length")) or gguf.get(key("rope.dimension_count")) or hidden // heads),
        "hidden_act": "silu",
        "max_position_embeddings": int(gguf.require(key("context_length"))),
        "rms_norm_eps": float(gguf.require(key("attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(gguf.get(key("rope.freq_base"), 10000.0)),
        "rope_scaling": _rope_scaling(gguf, arch),
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
    }
    config.update(_token_ids(gguf))
    if arch == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None)
    return config


def _vocab_size(gguf: GGUFFile, arch: str) -> int:
    size = gguf.get(f"{arch}.vocab_size")
    if size is None and "token_embd.weight" in gguf.tensors:
        size = int(gguf.tensors["token_embd.weight"].shape[-1])
    if size is None:
        raise gguf.error("neither a vocab_size key nor a token_embd.weight tensor")
    return int(size)


def _rope_scaling(gguf: GGUFFile, arch: str) -> dict | None:
    if "rope_freqs.weight" in gguf.tensors:
        raise gguf.error("per-dimension RoPE factors (rope_freqs.weight, Llama 3.1+ scaling) are not supported")
    kind = gguf.get(f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind != "linear":
        raise gguf.error(f"RoPE scaling {kind!r} is not supported; supported: none, linear")
    return {"rope_type": "linear", "factor": float(gguf.require(f"{arch}.rope.scaling.factor"))}


def _token_ids(gguf: GGUFFile) -> dict:
    ids = {"bos_token_id": gguf.get("tokenizer.ggml.bos_token_id"), "eos_token_id": gguf.get("tokenizer.ggml.eos_token_id"),
           "pad_token_id": gguf.get("tokenizer.ggml.padding_token_id")}
    return {name: int(value) for name, value in ids.items() if value is not None}


def hf_tensors(gguf: GGUFFile, config: dict, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF parameter name, tensor) for every tensor of the file, dequantized to dtype."""
    permuted = architecture(gguf) in PERMUTED_ARCHITECTURES
    for name in gguf.tensors:
        hf_name, module = _hf_name(gguf, name)
        tensor = gguf.dequantized(name, torch.float32)
        if permuted and module in ("attn_q", "attn_k"):
            heads = config["num_attention_heads"] if module == "attn_q" else config["num_key_value_heads"]
            tensor = unpermute_rows(tensor, heads)
        yield hf_name, tensor.to(dtype)


def _hf_name(gguf: GGUFFile, name: str) -> tuple[str, str | None]:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name], None
    match = _LAYER.match(name)
    if match is None or match.group(2) not in LAYER_NAMES:
        raise gguf.error(f"tensor {name!r} has no place in a {', '.join(ARCHITECTURES)} model")
    layer, module, kind = match.groups()
    return f"model.layers.{layer}.{LAYER_NAMES[module]}.{kind}", module


def unpermute_rows(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's `permute`: rows [heads, 2, D/2] were stored as [heads, D/2, 2]."""
    rows = tensor.shape[0]
    grouped = tensor.reshape(num_heads, rows // num_heads // 2, 2, *tensor.shape[1:])
    return grouped.transpose(1, 2).reshape(tensor.shape)


def permute_rows(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's `permute` (convert_hf_to_gguf.py): used to write test files as llama.cpp does."""
    rows = tensor.shape[0]
    grouped = tensor.reshape(num_heads, 2, rows // num_heads // 2, *tensor.shape[1:])
    return grouped.transpose(1, 2).reshape(tensor.shape)
