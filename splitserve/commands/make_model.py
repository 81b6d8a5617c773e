"""`splitserve make-model`: write a random HF model folder from a preset (no model hub)."""

from __future__ import annotations

import argparse

from splitserve.modelgen.presets import DTYPES, PRESETS


def register(subparsers) -> None:
    parser = subparsers.add_parser("make-model", help=__doc__.splitlines()[0].split(": ", 1)[1], description=__doc__)
    parser.add_argument("--preset", required=True, choices=list(PRESETS), help="model shape")
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="storage dtype (default: the preset's)")
    parser.add_argument("--max-shard-bytes", type=int, default=None, help="split the weights into shards of at most this size")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitserve.modelgen.writer import make_model
    from splitserve.modelgen.weights import DEFAULT_MAX_SHARD_BYTES

    preset = PRESETS[args.preset]
    out = make_model(args.preset, args.out, seed=args.seed, dtype=args.dtype,
                     max_shard_bytes=args.max_shard_bytes or DEFAULT_MAX_SHARD_BYTES)
    print(f"{out}  ({args.preset}: {preset.num_params():,} parameters, {args.dtype or preset.dtype})")
    return 0
