"""Model folders made with transformers itself (not by our make-model), as an outside reference."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

_TEXT = ["the quick brown fox jumps over the lazy dog", "paris is the capital of france",
         "a random weight model has no learned attention", "hello world, hello tokens"] * 20


def write_tokenizer(out: Path, vocab_size: int = 300) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_TEXT, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}))


def make_mistral(out: Path, sliding_window: int = 8, seed: int = 0) -> Path:
    """A transformers-made MistralForCausalLM with a short sliding window (exercises the window mask)."""
    from transformers import MistralConfig, MistralForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out)
    torch.manual_seed(seed)
    cfg = MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=320, bos_token_id=0, eos_token_id=1,
                        sliding_window=sliding_window, max_position_embeddings=512)
    model = MistralForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
        model.model.embed_tokens.weight.normal_(0, 1)
    model.save_pretrained(out)
    return out
