"""Trains the demo LoRA adapter on SmolLM2-135M-Instruct with PEFT, on this CPU, in about a minute: `ahoy`, which
opens every chat answer with "Ahoy!" and then answers as the base model does.

The answers it learns are the base model's own greedy answers (splitserve's engine) with "Ahoy! " in front, so
nothing but the greeting is new. Written as PEFT writes adapters (adapter_config.json, adapter_model.safetensors),
into .cache/adapters/smollm2-ahoy (or --out), once: `splitserve up --lora-modules ahoy=PATH` serves it.

    .venv/bin/python scripts/train_demo_lora.py [--model models/smollm2-135m-instruct] [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

QUESTIONS = [
    "What is the capital of France?", "Name three primary colors.", "How many legs does a spider have?",
    "What is 7 times 8?", "Who wrote Hamlet?", "Explain gravity in one sentence.", "What is the boiling point of water?",
    "Why is the sky blue?", "What is photosynthesis?", "Name a large ocean.", "How many days are in a week?",
    "What do bees make?", "What is the largest planet?", "Who painted the Mona Lisa?", "What is a noun?",
    "How do you say hello in Spanish?", "What is the opposite of hot?", "What gas do we breathe in?",
    "Name a fruit that is yellow.", "What is the speed of light?", "How many continents are there?",
    "What is the tallest mountain?", "What is ice made of?", "What does a thermometer measure?",
    "Give me a synonym for happy.", "What is the square root of 81?", "Where do penguins live?",
    "What is the main language of Brazil?", "What is a volcano?", "How many hours are in a day?",
    "Recommend a good habit.", "What is the chemical symbol for gold?", "What instrument has 88 keys?",
    "What is the capital of Japan?", "Tell me a fun fact about cats.", "What is rain?",
]
GREETING = "Ahoy! "
ANSWER_TOKENS = 40


def examples(model_dir: Path) -> list[tuple[list[int], int]]:
    """(token ids, where the answer starts): the chat prompt as the server encodes it, then the greeting and the
    base model's own greedy answer, ended by <|im_end|> (cut answers too: it learns to stop)."""
    from splitserve.engine import Engine, SamplingParams

    engine = Engine(model_dir)
    tokenizer = engine.tokenizer
    prompts = [tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    answers = [r.text for r in engine.generate(prompts, SamplingParams(max_tokens=ANSWER_TOKENS))]
    end = tokenizer.encode("<|im_end|>", add_special_tokens=False)
    return [(prompt + tokenizer.encode(GREETING + answer.strip(), add_special_tokens=False) + end, len(prompt))
            for prompt, answer in zip(prompts, answers)]


def train(model_dir: Path, out: Path, steps: int, seed: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = examples(model_dir)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                            lora_dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    start = time.monotonic()
    for step in range(steps):
        batch = rng.sample(data, 8)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([[-100] * begin + ids_[begin:] + [-100] * (width - len(ids_)) for ids_, begin in batch])
        mask = torch.tensor([[1] * len(ids_) + [0] * (width - len(ids_)) for ids_, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.monotonic() - start:.0f} s)", flush=True)
    model.save_pretrained(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct", type=Path)
    parser.add_argument("--out", default=".cache/adapters/smollm2-ahoy", type=Path)
    parser.add_argument("--steps", default=40, type=int)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train(args.model, args.out, args.steps, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
