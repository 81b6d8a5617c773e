"""LoRA adapters as llama.cpp writes them (convert_lora_to_gguf.py) and llama-server loads them (`--lora FILE`).

One GGUF file with `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` and, for each targeted
projection, `blk.N.<tensor>.weight.lora_a` [r, in] and `.lora_b` [out, r] (torch order). Read as llama.cpp reads
it: scale = alpha / r, or 1 when alpha is 0 or absent (the converter stores PEFT's lora_alpha and drops rsLoRA);
the `_norm.weight` vectors mergekit adds are skipped, as llama.cpp skips them. The converter permutes the rows of
a Llama model's q and k weights for its own RoPE, so the B of attn_q and attn_k comes back to HF order here.
An adapter of another architecture, an aLoRA, or LoRA on the token embeddings or the output is refused by name.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

import torch

from splitserve.engine.config import ModelConfig
from splitserve.engine.gguf_model import ARCHITECTURES, LAYER_NAMES, PERMUTED_ARCHITECTURES, unpermute_rows
from splitserve.engine.gguf_reader import GGUFFile, open_gguf

log = logging.getLogger(__name__)

# llama.cpp's tensor -> PEFT's projection name (attn_q -> q_proj, ...; the norms take no LoRA)
_PROJECTIONS = {tensor: module.rsplit(".", 1)[1] for tensor, module in LAYER_NAMES.items() if module.endswith("_proj")}
_TENSOR = re.compile(r"^blk\.(\d+)\.(\w+)\.weight\.lora_([ab])$")

# (layer, PEFT projection) -> {"A": [r, in], "B": [out, r]}
Matrices = dict[tuple[int, str], dict[str, torch.Tensor]]


def read_gguf_adapter(path: Path, cfg: ModelConfig) -> tuple[Matrices, Callable[[int], float]]:
    """The adapter's A and B per (layer, projection) in HF layout, and its scale as a function of the rank."""
    gguf = open_gguf(path)
    _check_kind(gguf, cfg)
    permuted = gguf.get("general.architecture") in PERMUTED_ARCHITECTURES
    matrices: Matrices = {}
    for name in gguf.tensors:
        if name.endswith("_norm.weight"):
            log.warning("%s: skipping %s (llama.cpp does not apply LoRA norm vectors either)", path, name)
            continue
        layer, projection, matrix = _tensor_name(gguf, name, cfg)
        tensor = gguf.dequantized(name, torch.float32)
        if permuted and matrix == "B" and projection in ("q_proj", "k_proj"):
            tensor = _hf_rows(tensor, cfg.num_heads if projection == "q_proj" else cfg.num_kv_heads, cfg.head_dim)
        matrices.setdefault((layer, projection), {})[matrix] = tensor
    alpha = float(gguf.get("adapter.lora.alpha") or 0.0)
    return matrices, (lambda rank: alpha / rank) if alpha else (lambda rank: 1.0)


def _check_kind(gguf: GGUFFile, cfg: ModelConfig) -> None:
    kind, adapter = gguf.get("general.type"), gguf.get("adapter.type")
    if kind != "adapter" or adapter != "lora":
        raise gguf.error(f"not a LoRA adapter (general.type {kind!r}, adapter.type {adapter!r}; expected 'adapter' "
                         f"and 'lora', as llama.cpp's convert_lora_to_gguf.py writes)")
    arch = gguf.get("general.architecture")
    if ARCHITECTURES.get(arch) != cfg.architecture:
        raise gguf.error(f"an adapter of a {arch!r} model; the model served is a {cfg.architecture}")
    if gguf.get("adapter.alora_invocation_tokens") is not None:
        raise gguf.error("an activated LoRA (adapter.alora_invocation_tokens) is not served")


def _tensor_name(gguf: GGUFFile, name: str, cfg: ModelConfig) -> tuple[int, str, str]:
    match = _TENSOR.match(name)
    if match is None or match.group(2) not in _PROJECTIONS:
        raise gguf.error(f"tensor {name!r} is not a LoRA weight of a layer's q/k/v/o/gate/up/down projection "
                         f"(LoRA on the token embeddings or the output is not served)")
    layer = int(match.group(1))
    if layer >= cfg.num_layers:
        raise gguf.error(f"tensor {name!r} names layer {layer}; the model has {cfg.num_layers}")
    return layer, _PROJECTIONS[match.group(2)], match.group(3).upper()


def _hf_rows(b: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """B's rows back in HF order; a B of the wrong height is left for the shape check to refuse."""
    return unpermute_rows(b, heads) if b.dim() == 2 and b.shape[0] == heads * head_dim else b
