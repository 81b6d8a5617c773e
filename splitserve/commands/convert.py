"""`splitserve convert`: a GGUF file -> an HF model folder (safetensors, tokenizer.json, config, chat template)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help=__doc__.splitlines()[0].split(": ", 1)[1], description=__doc__)
    p.add_argument("gguf", metavar="FILE.gguf", help="GGUF model file (llama or qwen2; F32, F16, BF16, Q4/Q5/Q8, K-quants)")
    p.add_argument("--out", required=True, help="folder to write (created if missing)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights dtype")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitserve.engine.gguf_convert import convert_gguf

    try:
        out = convert_gguf(args.gguf, args.out, args.dtype)
    except ValueError as exc:  # ModelFormatError included: one line naming the file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
