"""Flags `simulate` and `plan` share: the workload (as `splitserve bench` names it), the load,
the profiles. Parsed here into SimWorkload and profiles; nothing runs."""

from __future__ import annotations

import argparse
import math

from splitserve.sim.profile import Profile, load_profile


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    from splitserve.bench.workloads import WORKLOADS

    g = p.add_argument_group("workload (as splitserve bench)")
    g.add_argument("--workload", default="sharegpt", choices=list(WORKLOADS))
    g.add_argument("--input-len", type=int, default=1024, help="fixed: prompt tokens")
    g.add_argument("--output-len", type=int, default=128, help="fixed, rag: output tokens")
    g.add_argument("--trace-file", help="mooncake: the .jsonl trace; others: replaces the default data file")
    g.add_argument("--window", help="trace workloads: START:END seconds from the trace's first request")
    g.add_argument("--max-input-len", type=int)
    g.add_argument("--max-output-len", type=int)
    g.add_argument("--rag-passages", type=int, default=5)
    g.add_argument("--rag-zipf", type=float, default=1.0)
    g.add_argument("--chunk-hit-rate", type=float, default=0.0, help="rag: probability a passage's KV is cached")
    g.add_argument("--tokenizer", metavar="MODEL_DIR", help="rag: count passages with this tokenizer")
    g.add_argument("--request-rate", type=float, default=math.inf, help="req/s (trace arrivals: rescale the trace)")
    g.add_argument("--arrival", choices=("poisson", "gamma", "constant", "trace"),
                   help="default: trace for azure-*/mooncake, gamma if --burstiness != 1, else poisson")
    g.add_argument("--burstiness", type=float, default=1.0)
    g.add_argument("--num-requests", type=int)
    g.add_argument("--duration-s", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--time-scale", type=float, default=1.0)
    g.add_argument("--replay", metavar="BENCH.json", help="replay the requests of a measured bench run instead")


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--profile", help="profile JSON for every node (splitserve profile)")
    for role in ("prefill", "decode", "mixed"):
        g.add_argument(f"--{role}-profile", help=f"profile of the {role} nodes (default: --profile)")
    g.add_argument("--policy", default="least_loaded", help="round_robin, least_loaded, cache_aware, splitwise")
    g.add_argument("--transport", default="torch", help="KV transport whose profiled time is used")
    g.add_argument("--max-queue", type=int, default=256, help="router --max-queue (load shedding)")
    g.add_argument("--hop-ms", type=float, default=1.0, help="one gRPC call or reply")
    g.add_argument("--host-cores", type=int, default=0,
                   help="nodes share hosts of this many cores: steps stretch while co-hosted nodes are busy "
                        "(the profile's --corun measurements); 0: each node has cores of its own")
    g.add_argument("--nodes-per-host", type=int, default=0, help="with --host-cores: nodes per host (0: all on one)")
    g.add_argument("--router", default="auto", choices=("auto", "exact", "index"),
                   help="exact: router/cluster/policies.py per request; index: heaps (large fleets); auto: index above 64 nodes")
    g.add_argument("--step-jitter", action="store_true",
                   help="decode steps drawn from the profile's measured spread (seeded), one by one; default: its median")
    g.add_argument("--jitter-seed", type=int, default=0, help="seed of --step-jitter's draws")
    g.add_argument("--no-decode-affinity", action="store_true",
                   help="as the router's flag: split requests go to the policy's decode node, not the one holding "
                        "the most of their prompt")
    g.add_argument("--decode-affinity-slack", type=int, default=2,  # router.cluster.local_prefill.AFFINITY_SLACK
                   help="as the router's flag: the holder takes a split request if it runs at most this many more")
    g.add_argument("--max-local-prefill-tokens", type=int, default=0,
                   help="as the router's flag: a prompt leaving at most this many tokens to compute on a decode node "
                        "runs whole there (0: off)")


def workload_spec(args: argparse.Namespace):
    from splitserve.bench.arrivals import ArrivalConfig
    from splitserve.bench.workloads import WorkloadConfig
    from splitserve.commands.bench import TRACE_WORKLOADS, _window
    from splitserve.sim.workload import SimWorkload

    kind = args.arrival or ("trace" if args.workload in TRACE_WORKLOADS else
                            "gamma" if args.burstiness != 1.0 else "poisson")
    workload = WorkloadConfig(
        name=args.workload, input_len=args.input_len, output_len=args.output_len, seed=args.seed,
        trace_file=args.trace_file, window_s=_window(args.window), max_input_len=args.max_input_len,
        max_output_len=args.max_output_len, rag_passages=args.rag_passages, rag_zipf=args.rag_zipf)
    arrival = ArrivalConfig(kind=kind, rate=args.request_rate, burstiness=args.burstiness, seed=args.seed,
                            time_scale=args.time_scale)
    return SimWorkload(workload, arrival, args.num_requests, args.duration_s, args.chunk_hit_rate)


def load_requests(args: argparse.Namespace) -> tuple[list, dict]:
    """(requests, run description) from --replay or the workload flags."""
    from splitserve.sim.workload import from_bench_json, make_requests

    if args.replay:
        requests, measured = from_bench_json(args.replay)
        return requests, {"workload": measured.get("workload"), "request_rate": measured.get("request_rate"),
                          "arrival": measured.get("arrival"), "replay": args.replay}
    spec = workload_spec(args)
    tokenizer = None
    if args.tokenizer:
        from splitserve.bench.prompts import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    run = {"workload": spec.workload.name, "request_rate": _jsonable_rate(spec.arrival.rate),
           "burstiness": spec.arrival.burstiness, "arrival": spec.arrival.kind, "seed": spec.workload.seed,
           "chunk_hit_rate": spec.chunk_hit_rate}
    return make_requests(spec, tokenizer), run


def _jsonable_rate(rate: float):
    return rate if math.isfinite(rate) else "inf"


def role_profiles(args: argparse.Namespace) -> dict[str, Profile]:
    profiles = {}
    for role in ("prefill", "decode", "mixed"):
        path = getattr(args, f"{role}_profile") or args.profile
        if path:
            profiles[role] = load_profile(path)
    if not profiles:
        raise ValueError("give --profile PROFILE.json (from `splitserve profile`) or per-role profiles")
    return profiles


def routing_options(args: argparse.Namespace) -> dict:
    """ClusterConfig's settings of the router's decode-node choice, from the flags above."""
    return {"decode_affinity": not args.no_decode_affinity, "decode_affinity_slack": args.decode_affinity_slack,
            "max_local_prefill_tokens": args.max_local_prefill_tokens}
