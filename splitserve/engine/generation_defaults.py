"""The sampling defaults a model's creator recommends, as vLLM and llama.cpp read them.

An HF folder keeps them in generation_config.json (`temperature`, `top_p`, `top_k`, `min_p`,
`repetition_penalty`); a GGUF file in `general.sampling.*` (llama.cpp's converter copies them
there from generation_config.json, and `splitserve convert` copies them back). The OpenAI API
uses them for what a request leaves out (vLLM's `--generation-config auto`, its default, and
llama-server's); `do_sample` is not read (vLLM ignores it too). A value out of range is an
error at startup that names the file, not a request that fails later.
"""

from __future__ import annotations

import json
from pathlib import Path

from splitserve.engine.gguf_reader import is_gguf_path, open_gguf
from splitserve.engine.sampling import SamplingParams

HF_KEYS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repetition_penalty": float}
GGUF_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
             "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
             "general.sampling.penalty_repeat": "repetition_penalty"}


def sampling_defaults(model_path: str | Path) -> dict:
    """{SamplingParams field: value} for the sampling settings the model recommends (empty if none)."""
    if is_gguf_path(model_path):
        found = gguf_sampling_config(open_gguf(model_path))
        source = f"{model_path}: general.sampling"
    else:
        path = Path(model_path) / "generation_config.json"
        config = json.loads(path.read_text()) if path.is_file() else {}
        found = {name: config[name] for name in HF_KEYS if config.get(name) is not None}
        source = str(path)
    defaults = {}
    for name, value in found.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: {name} must be a number, got {value!r}")
        defaults[name] = HF_KEYS[name](value)
    try:
        SamplingParams(**defaults)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return defaults


def gguf_sampling_config(gguf) -> dict:
    """generation_config.json's sampling keys from a GGUF file's general.sampling.* (convert)."""
    return {name: gguf.get(key) for key, name in GGUF_KEYS.items() if gguf.get(key) is not None}
