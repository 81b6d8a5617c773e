"""Loads an HF checkpoint folder (single or sharded safetensors) or a GGUF file into `CausalLM`.

A GGUF file is dequantized tensor by tensor with the `gguf` package (see gguf_model.py) and
follows the same path from HF names on; problems with either source are `ModelFormatError`s.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from splitserve.engine.config import ModelConfig, read_hf_config
from splitserve.engine.errors import ModelFormatError
from splitserve.engine.gguf_reader import is_gguf_path, open_gguf
from splitserve.engine.model import CausalLM

_FUSED = {  # HF name part -> (our fused parameter, index of the part in the fused order)
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise ModelFormatError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def read_tensors(model: Path):
    """(HF name, tensor) pairs of a folder's safetensors or of a GGUF file."""
    if is_gguf_path(model):
        from splitserve.engine.gguf_model import hf_tensors

        yield from hf_tensors(open_gguf(model), read_hf_config(model))
        return
    for path in checkpoint_files(model):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (OSError, SafetensorError) as exc:
            raise ModelFormatError(f"{path}: unreadable safetensors file ({exc})") from None


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> CausalLM:
    model_dir = Path(model_dir)
    cfg = ModelConfig.from_dir(model_dir)
    with torch.device("meta"):
        model = CausalLM(cfg)
    params: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in read_tensors(model_dir):
        if "rotary_emb" in name:  # old checkpoints carry a derived inv_freq buffer
            continue
        target, index = _our_name(name)
        if index is None:
            params[target] = tensor
        else:
            parts.setdefault(target, {})[index] = tensor
    for target, pieces in parts.items():
        params[target] = torch.cat([pieces[i] for i in sorted(pieces)], dim=0)
    if cfg.tie_word_embeddings or "lm_head.weight" not in params:
        params["lm_head.weight"] = params["embed_tokens.weight"]
    _check_names(model, params, model_dir)
    state = {k: v.to(dtype=dtype, device=device) for k, v in params.items()}
    model.load_state_dict(state, assign=True, strict=True)
    model.init_rotary(cfg.max_position_embeddings, device)
    return model.eval()


def _our_name(hf_name: str) -> tuple[str, int | None]:
    match = _LAYER.match(hf_name)
    if match is None:
        return hf_name.removeprefix("model."), None
    layer, module, kind = match.groups()
    fused, index = _FUSED.get(module, (module, None))
    return f"layers.{layer}.{fused}.{kind}", index


def _check_names(model: CausalLM, params: dict, source: Path) -> None:
    expected = set(model.state_dict().keys())
    missing, unexpected = expected - params.keys(), params.keys() - expected
    if missing or unexpected:
        raise ModelFormatError(f"{source}: checkpoint does not match the architecture: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
