"""`splitserve generate`: run prompts through the single-process engine."""

from __future__ import annotations

import argparse
import json
import sys

from splitserve.commands.sampling_flags import add_sampling_flags, sampling_kwargs


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text with the single-process engine")
    p.add_argument("--model", required=True, help="HF model folder or .gguf file")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message with the chat template")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    p.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                   help="LoRA adapters (PEFT folders or GGUF LoRA files) to load; --lora NAME runs one")
    add_sampling_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from splitserve.engine import Engine, EngineConfig, SamplingParams
    from splitserve.engine.lora_names import parse_lora_modules

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, seed=args.seed, stop=tuple(args.stop), **sampling_kwargs(args))
        engine = Engine(args.model, EngineConfig(dtype=args.dtype, device=args.device,
                                                 lora_modules=parse_lora_modules(args.lora_modules)))
        prompts = [_prompt_ids(engine, text, args.chat) for text in args.prompt]
        results = engine.generate(prompts, params)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        if args.json:
            print(json.dumps({"prompt_token_ids": result.prompt_token_ids, "token_ids": result.token_ids,
                              "text": result.text, "finish_reason": result.finish_reason}))
        else:
            print(result.text)
    return 0


def _prompt_ids(engine, text: str, chat: bool) -> list[int]:
    if chat:
        return engine.tokenizer.encode_chat([{"role": "user", "content": text}])
    return engine.tokenizer.encode(text)
