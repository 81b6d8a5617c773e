"""`convert_gguf`: a GGUF file -> an HF model folder that transformers and the engine load as is.

Folder: model.safetensors (dequantized, HF names and layouts), config.json,
generation_config.json (every end-of-generation id, and the recommended sampling settings of
`general.sampling.*`), tokenizer.json, tokenizer_config.json and
chat_template.jinja. Dequantizing once here spares each node start the work (and the slow
metadata parse of the `gguf` reader).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from splitserve.engine.config import DTYPES
from splitserve.engine.generation_defaults import gguf_sampling_config
from splitserve.engine.gguf_model import hf_config, hf_tensors
from splitserve.engine.gguf_reader import open_gguf
from splitserve.engine.gguf_tokenizer import build_tokenizer, eos_token_ids, tokenizer_config


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the folder (created if missing, files overwritten) and return its path."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    gguf = open_gguf(gguf_path)
    config = hf_config(gguf)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_weights(gguf, config, out / "model.safetensors", DTYPES[dtype])
    _write_json(out / "config.json", {**config, "torch_dtype": dtype, "use_cache": True})
    _write_json(out / "generation_config.json",
                {**_generation_config(config, eos_token_ids(gguf)), **gguf_sampling_config(gguf)})
    build_tokenizer(gguf).save(str(out / "tokenizer.json"))
    tok_config = tokenizer_config(gguf)
    template = tok_config.pop("chat_template")
    _write_json(out / "tokenizer_config.json", {**tok_config, "model_max_length": config["max_position_embeddings"]})
    (out / "chat_template.jinja").unlink(missing_ok=True)
    if template:
        (out / "chat_template.jinja").write_text(template)
    return out


def _write_weights(gguf, config: dict, path: Path, dtype: torch.dtype) -> None:
    tensors = {name: t.contiguous() for name, t in hf_tensors(gguf, config, dtype)}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _generation_config(config: dict, eos_ids: list[int]) -> dict:
    ids = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": eos_ids or None,
           "pad_token_id": config.get("pad_token_id")}
    return {**{k: v for k, v in ids.items() if v is not None}, "do_sample": False}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
