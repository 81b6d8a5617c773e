"""Random weights for a preset, written as (possibly sharded) safetensors.

Each tensor has its own torch.Generator seeded from (seed, name), so a tensor's values do
not depend on the dtype, the sharding or the order of writing. The scales are chosen so the
model is not degenerate: the residual stream keeps unit scale through the layers, logits
have a standard deviation of about LOGIT_STD (a peaked, non-uniform next-token
distribution). Tied embeddings are kept small (TIED_EMBED_SCALE) so that the input token's
own embedding, still present in the final residual, does not make the model repeat it; the
final norm weight makes up the logit scale instead. q and k are scaled up (QK_GAIN) for
sharp attention: with flat attention every position sees the same average and greedy
decoding collapses into one repeated token.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from splitserve.modelgen.presets import ModelPreset

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_SHARD_BYTES = 1 << 30
LOGIT_STD = 3.0
TIED_EMBED_SCALE = 0.5
QK_GAIN = 2.0  # attention scores get a std of about QK_GAIN**2
NORM_NOISE_STD = 0.1
BIAS_STD = 0.2
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def init_tensor(preset: ModelPreset, name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 values of one parameter."""
    gen = torch.Generator().manual_seed(_tensor_seed(seed, name))
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name.endswith("norm.weight"):
        return noise.mul_(NORM_NOISE_STD).add_(_norm_mean(preset, name))
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        noise[preset.tokenizer_vocab:] = 0.0  # ids the tokenizer lacks: logit 0, never greedy
    return noise.mul_(_std(preset, name, shape))


def _norm_mean(preset: ModelPreset, name: str) -> float:
    if name == "model.norm.weight" and preset.tie_word_embeddings:
        return LOGIT_STD / TIED_EMBED_SCALE
    return 1.0


def _std(preset: ModelPreset, name: str, shape: tuple[int, ...]) -> float:
    # logits = final_norm(h) @ lm_head.T, and the normed h has unit rms
    if name == "model.embed_tokens.weight":
        return TIED_EMBED_SCALE / math.sqrt(preset.hidden_size) if preset.tie_word_embeddings else 1.0
    if name == "lm_head.weight":
        return LOGIT_STD / math.sqrt(preset.hidden_size)
    if name.endswith(".bias"):
        return BIAS_STD
    gain = QK_GAIN if name.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
    return gain / math.sqrt(shape[1])  # linear [out, in]: gain 1 keeps unit scale


def _tensor_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def plan_shards(preset: ModelPreset, dtype: str, max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Parameters grouped into shards of at most max_shard_bytes (a bigger tensor gets its own)."""
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    item = torch.finfo(TORCH_DTYPES[dtype]).bits // 8
    shards: list[list] = [[]]
    used = 0
    for name, shape in preset.param_shapes():
        size = math.prod(shape) * item
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append((name, shape))
        used += size
    return shards


def write_weights(preset: ModelPreset, out_dir: Path, seed: int, dtype: str, max_shard_bytes: int) -> list[Path]:
    """model.safetensors, or model-0000i-of-0000n.safetensors + the index; the files written."""
    shards = plan_shards(preset, dtype, max_shard_bytes)
    names = _shard_names(len(shards))
    weight_map, total_bytes = {}, 0
    for file_name, shard in zip(names, shards):
        tensors = {name: init_tensor(preset, name, shape, seed).to(TORCH_DTYPES[dtype]) for name, shape in shard}
        save_file(tensors, str(out_dir / file_name), metadata={"format": "pt"})
        (out_dir / file_name).chmod(0o644)
        total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, file_name))
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [out_dir / n for n in names]


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
