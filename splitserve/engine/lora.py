"""LoRA adapters, as PEFT or llama.cpp saves them, served beside the base model: many adapters in one batch (vLLM's
multi-LoRA).

An adapter is a folder written by PEFT's `save_pretrained`: adapter_config.json and adapter_model.safetensors (a
pickled adapter_model.bin is refused: nothing is unpickled); or a GGUF file written by llama.cpp's
convert_lora_to_gguf.py (lora_gguf.py). A targeted projection W then computes
W x + scale * B (A x), scale = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora; r is each module's own rank,
so PEFT's rank_pattern needs nothing more). Options that change that formula (DoRA, LoRA biases, alpha_pattern,
modules_to_save, ...) are refused by name when the adapter loads.

Nothing is merged into the base weights: a request names its adapter (SamplingParams.lora), keeps it from admission
to its end (an adapter unloaded meanwhile serves the requests it already has), and after each of a
layer's four fused projections (qkv, o, gate_up, down) the rows of each adapter in the step get their delta,
x[rows] @ A^T @ B^T, two small matmuls per adapter and projection. The q, k and v parts of the fused qkv
projection (and gate, up) are one A, their rows stacked, and one block-diagonal B with the scales folded in.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from splitserve.engine.config import ModelConfig
from splitserve.engine.errors import ModelFormatError
from splitserve.engine.gguf_reader import is_gguf_path
from splitserve.engine.lora_gguf import Matrices, read_gguf_adapter

# a PEFT projection -> (our fused projection, its part's index among the fused parts)
_PARTS = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2), "o_proj": ("o_proj", 0),
          "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1), "down_proj": ("down_proj", 0)}
_TENSOR = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
# adapter_config.json options that change the computation, refused when set
_REFUSED_OPTIONS = ("use_dora", "lora_bias", "alpha_pattern", "modules_to_save", "fan_in_fan_out", "layer_replication",
                    "trainable_token_indices", "target_parameters", "use_qalora", "use_bdlora",
                    "alora_invocation_tokens")


@dataclass(frozen=True)
class LoraWeights:
    """One fused projection's delta: x @ a_t @ b_t (the scales folded into b_t)."""

    a_t: torch.Tensor  # [in, sum of the parts' ranks]
    b_t: torch.Tensor  # [sum of ranks, out]: block-diagonal over the parts

    def to(self, dtype: torch.dtype, device) -> "LoraWeights":
        return LoraWeights(self.a_t.to(dtype=dtype, device=device), self.b_t.to(dtype=dtype, device=device))


@dataclass(frozen=True)
class LoraAdapter:
    name: str
    path: str
    weights: dict[tuple[int, str], LoraWeights] = field(repr=False)  # (layer, fused projection) -> its delta
    # this loading of it: cached KV is keyed by it, so an adapter loaded again under the name finds none of the old
    load_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def load_adapters(modules, cfg: ModelConfig, dtype: torch.dtype, device) -> dict[str, LoraAdapter]:
    """Each (name, path) as an adapter of the model `cfg` describes; ModelFormatError for one that does not fit."""
    return {name: load_adapter(name, Path(path), cfg, dtype, device) for name, path in modules}


def load_adapter(name: str, path: Path, cfg: ModelConfig, dtype: torch.dtype, device) -> LoraAdapter:
    """A PEFT folder, or a GGUF file (llama.cpp's), as an adapter of the model `cfg` describes."""
    if not path.exists():
        raise ModelFormatError(f"{path}: no such LoRA adapter (expected a PEFT adapter folder or a GGUF LoRA file)")
    if is_gguf_path(path):
        matrices, scale = read_gguf_adapter(path, cfg)
    else:
        scale = _peft_scale(_read_config(path))
        matrices = _read_matrices(path, cfg)
    if not matrices:
        raise ModelFormatError(f"{path}: no LoRA weights of q/k/v/o/gate/up/down projections")
    weights = {key: _fuse(by_part, scale, _in_size(cfg, key[1]), _out_sizes(cfg, key[1]), path).to(dtype, device)
               for key, by_part in _by_fused_projection(matrices).items()}
    return LoraAdapter(name, str(path), weights)


def _by_fused_projection(matrices: Matrices) -> dict[tuple[int, str], dict[int, dict[str, torch.Tensor]]]:
    """(layer, fused projection) -> part index -> {"A": [r, in], "B": [out, r]}."""
    parts: dict = {}
    for (layer, projection), by_matrix in matrices.items():
        fused, index = _PARTS[projection]
        parts.setdefault((layer, fused), {})[index] = by_matrix
    return parts


def _read_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        options = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable adapter config ({exc})") from None
    if not isinstance(options, dict) or options.get("peft_type", "LORA") != "LORA":
        raise ModelFormatError(f"{path}: not a LoRA adapter (peft_type {options.get('peft_type')!r})")
    refused = [key for key in _REFUSED_OPTIONS if options.get(key)]
    if options.get("bias", "none") != "none":
        refused.append("bias")
    if refused:
        raise ModelFormatError(f"{path}: LoRA options not served: {', '.join(refused)}")
    alpha = options.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ModelFormatError(f"{path}: lora_alpha must be a number, got {alpha!r}")
    return options


def _peft_scale(options: dict) -> Callable[[int], float]:
    """PEFT's scale for a module of rank r: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora."""
    alpha, rslora = options["lora_alpha"], bool(options.get("use_rslora"))
    return lambda rank: alpha / (math.sqrt(rank) if rslora else rank)


def _read_matrices(folder: Path, cfg: ModelConfig) -> Matrices:
    path = folder / "adapter_model.safetensors"
    if not path.exists():
        raise ModelFormatError(f"{folder}: no adapter_model.safetensors (a pickled adapter_model.bin is not read)")
    matrices: Matrices = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                layer, projection, matrix = _tensor_name(key, cfg, path)
                matrices.setdefault((layer, projection), {})[matrix] = f.get_tensor(key).float()
    except (OSError, SafetensorError) as exc:
        raise ModelFormatError(f"{path}: unreadable safetensors file ({exc})") from None
    return matrices


def _tensor_name(key: str, cfg: ModelConfig, path: Path) -> tuple[int, str, str]:
    match = _TENSOR.match(key)
    if match is None or match.group(2) not in _PARTS:
        raise ModelFormatError(f"{path}: tensor {key!r} is not a LoRA weight of a layer's q/k/v/o/gate/up/down "
                               f"projection")
    layer = int(match.group(1))
    if layer >= cfg.num_layers:
        raise ModelFormatError(f"{path}: tensor {key!r} names layer {layer}; the model has {cfg.num_layers}")
    return layer, match.group(2), match.group(3)


def _out_sizes(cfg: ModelConfig, fused: str) -> list[int]:
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"qkv_proj": [q, kv, kv], "o_proj": [cfg.hidden_size], "gate_up_proj": [cfg.intermediate_size] * 2,
            "down_proj": [cfg.hidden_size]}[fused]


def _in_size(cfg: ModelConfig, fused: str) -> int:
    return {"o_proj": cfg.num_heads * cfg.head_dim, "down_proj": cfg.intermediate_size}.get(fused, cfg.hidden_size)


def _fuse(by_part: dict[int, dict[str, torch.Tensor]], scale_of: Callable[[int], float], in_size: int,
          out_sizes: list[int], path: Path) -> LoraWeights:
    """The parts' A rows stacked, and B block-diagonal with each part's scale folded in."""
    a_rows, blocks = [], []
    for index in sorted(by_part):
        a, b = by_part[index].get("A"), by_part[index].get("B")
        if a is None or b is None or a.dim() != 2 or a.shape[1] != in_size or b.shape != (out_sizes[index], a.shape[0]):
            shapes = [None if m is None else tuple(m.shape) for m in (a, b)]
            raise ModelFormatError(f"{path}: lora_A / lora_B {shapes} do not fit a projection of {in_size} inputs "
                                   f"and {out_sizes[index]} outputs (expected [r, {in_size}] and [{out_sizes[index]}, r])")
        a_rows.append(a)
        blocks.append((index, b * scale_of(a.shape[0])))
    a = torch.cat(a_rows)
    b_t = torch.zeros(a.shape[0], sum(out_sizes))
    row = 0
    for index, b in blocks:
        col = sum(out_sizes[:index])
        b_t[row:row + b.shape[1], col:col + b.shape[0]] = b.t()
        row += b.shape[1]
    return LoraWeights(a.t().contiguous(), b_t)


class LoraBatch:
    """Which rows of a step's tokens run which adapter; `add` puts the adapters' deltas onto a projection's output."""

    def __init__(self, groups: list[tuple[LoraAdapter, list[slice | None]]]):
        self.groups = groups  # (adapter, its runs of contiguous rows; None: every row of the step)

    def add(self, out: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> torch.Tensor:
        """out [T, out] += each adapter's delta of x [T, in] on its rows, in place; returns out."""
        for adapter, runs in self.groups:
            w = adapter.weights.get((layer, projection))
            if w is not None:
                for rows in runs:
                    if rows is None:  # no views to make: a step of one adapter (batch-1 decodes, ~120 per step)
                        out.addmm_(x @ w.a_t, w.b_t)
                    else:
                        out[rows].addmm_(x[rows] @ w.a_t, w.b_t)
        return out


def lora_batch(row_ranges: list[tuple[LoraAdapter | None, int, int]]) -> LoraBatch | None:
    """The batch for rows [start, end) of each adapter (None: the base model), adjacent ranges of one adapter
    joined; None when no row has an adapter. (The runner orders a step's requests by adapter, so each adapter's
    decodes are one run.)"""
    runs: dict[str, tuple[LoraAdapter, list[slice | None]]] = {}
    for adapter, start, end in row_ranges:
        if adapter is None or start == end:
            continue
        group = runs.setdefault(adapter.name, (adapter, []))[1]
        if group and group[-1].stop == start:
            group[-1] = slice(group[-1].start, end)
        else:
            group.append(slice(start, end))
    if not runs:
        return None
    groups = list(runs.values())
    total = sum(end - start for _, start, end in row_ranges)
    if len(groups) == 1 and groups[0][1] == [slice(0, total)]:  # every row of the step: no views needed
        return LoraBatch([(groups[0][0], [None])])
    return LoraBatch(groups)
