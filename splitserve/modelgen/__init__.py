"""Local model making: presets, a BPE tokenizer trained on a shipped corpus, random HF checkpoints.

No model hub is ever used; everything is generated here, deterministically from a seed.
Names are imported on first use, so `import splitserve.modelgen` does not import torch.
"""

import importlib

_EXPORTS = {
    "FORMAT_VERSION": "cache", "default_cache_root": "cache", "ensure_model": "cache",
    "PRESETS": "presets", "ModelPreset": "presets", "get_preset": "presets",
    "CHAT_TEMPLATE": "tokenizer", "SPECIAL_IDS": "tokenizer", "SPECIAL_TOKENS": "tokenizer", "train_tokenizer": "tokenizer",
    "make_model": "writer", "write_config_files": "writer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
