"""`splitserve profile`: measure this engine on this machine into a profile for `simulate` and
`plan`: prefill step time vs prompt tokens (chunked), decode step time vs batch and context,
KV transfer time vs bytes per backend (torch, grpc), the node's KV capacity in tokens; fitted
piecewise-linear models with the raw points, and a plot (--plot). --quick takes under a
minute on the `small` model; the full profile a few minutes.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="measure the engine into a profile (for simulate / plan)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--out", default="profile.json", help="profile JSON to write")
    p.add_argument("--plot", help="PNG of the measured points and the fits")
    p.add_argument("--threads", type=int, default=1, help="torch threads (as the node's --threads)")
    p.add_argument("--quick", action="store_true", help="fewer points: under a minute on `small`")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--backends", default="torch,grpc", help="KV transports to time (comma list)")
    g = p.add_argument_group("the node's serving flags (its KV capacity and scheduler limits)")
    g.add_argument("--kv-cache-bytes", type=int, default=1 << 30)
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--max-num-seqs", type=int, default=64)
    g.add_argument("--max-batched-tokens", type=int, default=2048)
    g.add_argument("--one-shot-max-tokens", type=int, default=256)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from splitserve.sim.plots import plot_profile
    from splitserve.sim.profiler import ProfileConfig, run_profile

    try:
        config = ProfileConfig(
            model_dir=args.model, quick=args.quick, threads=args.threads, device=args.device, dtype=args.dtype,
            backends=tuple(b for b in args.backends.split(",") if b), kv_cache_bytes=args.kv_cache_bytes,
            block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_batched_tokens, one_shot_max_tokens=args.one_shot_max_tokens)
    except (ValueError, FileNotFoundError) as e:
        print(f"splitserve profile: error: {e}", file=sys.stderr)
        return 2
    profile = run_profile(config, log=lambda line: print(line, file=sys.stderr))
    print(f"wrote {profile.save(args.out)} (KV capacity {profile.engine.kv_capacity_tokens} tokens, "
          f"{profile.meta['profile_seconds']}s)")
    if args.plot:
        print(f"wrote {plot_profile(profile, args.plot)}")
    return 0
