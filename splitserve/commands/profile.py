"""`splitserve profile`: measure this engine on this machine into a profile for `simulate` and
`plan`: prefill step time vs prompt tokens (chunked), decode step time vs batch and context,
KV transfer time vs bytes per backend (torch, grpc), the node's KV capacity in tokens; fitted
piecewise-linear models with the raw points, and a plot (--plot). --quick takes under a
minute on the `small` model; the full profile a few minutes.
"""

from __future__ import annotations

import argparse
import sys

from splitserve.sim.node_flags import add_shape_flags


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="measure the engine into a profile (for simulate / plan)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--out", default="profile.json", help="profile JSON to write")
    p.add_argument("--plot", help="PNG of the measured points and the fits")
    p.add_argument("--quick", action="store_true", help="fewer points: under a minute on `small`")
    p.add_argument("--corun", type=int, default=0, metavar="K",
                   help="also time steps in 1..K engine processes at once: how steps stretch when nodes share "
                        "this machine's cores (simulate --host-cores)")
    p.add_argument("--backends", default="torch,grpc", help="KV transports to time (comma list)")
    p.add_argument("--configmap", help="also write the profile into key profile.json of this existing ConfigMap "
                   "(Kubernetes API; the Helm chart's profile Job)")
    p.add_argument("--namespace", help="the ConfigMap's namespace (default: the pod's own)")
    add_shape_flags(p.add_argument_group("the node's flags (device, KV capacity, scheduler limits): node/cli.py's "
                                         "definitions and defaults"))
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from splitserve.sim.plots import plot_profile
    from splitserve.sim.profiler import ProfileConfig, run_profile
    from splitserve.sim.publish import PROFILE_KEY, pod_namespace, write_configmap

    try:
        config = ProfileConfig(
            model_dir=args.model, quick=args.quick, threads=args.threads, device=args.device, dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
            backends=tuple(b for b in args.backends.split(",") if b), kv_cache_bytes=args.kv_cache_bytes,
            num_blocks=args.num_blocks, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_batched_tokens, one_shot_max_tokens=args.one_shot_max_tokens, corun=args.corun)
    except (ValueError, FileNotFoundError) as e:
        print(f"splitserve profile: error: {e}", file=sys.stderr)
        return 2
    namespace = args.namespace or pod_namespace()
    if args.configmap and not namespace:
        print("splitserve profile: error: --configmap needs --namespace outside a pod", file=sys.stderr)
        return 2
    profile = run_profile(config, log=lambda line: print(line, file=sys.stderr))
    path = profile.save(args.out)
    print(f"wrote {path} (KV capacity {profile.engine.kv_capacity_tokens} tokens, {profile.meta['profile_seconds']}s)")
    if args.configmap:
        write_configmap(args.configmap, namespace, path.read_text())
        print(f"wrote configmap {namespace}/{args.configmap} key {PROFILE_KEY}")
    if args.plot:
        print(f"wrote {plot_profile(profile, args.plot)}")
    return 0
