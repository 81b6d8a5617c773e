"""LoRA adapters written by PEFT itself (random, non-zero weights), and PEFT's model over HF transformers as the
judge of what an adapter computes."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_peft_adapter(model_dir, folder: Path, seed: int, targets=ALL_PROJECTIONS, rank: int = 4,
                       alpha: float = 8, **options) -> Path:
    """PEFT's save_pretrained of a LoRA over the model with random A and B (`init_lora_weights=False`), B scaled
    down so the adapter changes the model's answers without swamping them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                            init_lora_weights=False, **options))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.5)
    model.save_pretrained(str(folder))
    return folder


@functools.lru_cache(maxsize=4)
def peft_model(model_dir: str, adapter_dir: str):
    """HF transformers' model with PEFT's adapter on it (not merged): the reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval()
