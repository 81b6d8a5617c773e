"""`splitserve simulate`: the cluster as built, in simulated time, driven by node profiles.

Replays a bench workload (or the requests of a measured `bench --json` run, --replay) at a
rate against P prefill, D decode and M mixed nodes: the router's policies (router/cluster/policies.py
itself), each engine's token-budget scheduler (chunked prefill, continuous batching,
preemption by recompute), KV reservations, the transfer, retries and load shedding. Prints
the bench table; --json writes `splitserve bench`'s JSON shape (plus a `sim` block with
per-node utilisation and queueing), so `splitserve bench compare sim.json measured.json` works.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="simulate a cluster from node profiles (bench-shaped results)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from splitserve.sim.args import add_cluster_arguments, add_workload_arguments

    g = p.add_argument_group("pools")
    g.add_argument("--prefill", type=int, default=1)
    g.add_argument("--decode", type=int, default=1)
    g.add_argument("--mixed", type=int, default=0)
    add_cluster_arguments(p)
    add_workload_arguments(p)
    g = p.add_argument_group("output")
    g.add_argument("--slo", help="goodput SLOs in ms, e.g. ttft:500,tpot:50")
    g.add_argument("--percentiles", default="50,90,99")
    g.add_argument("--json", metavar="FILE")
    g.add_argument("--label")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from splitserve.bench.metrics import parse_percentiles, parse_slos
    from splitserve.bench.report import format_table, save_json
    from splitserve.sim.args import load_requests, role_profiles, routing_options
    from splitserve.sim.cluster import ClusterConfig
    from splitserve.sim.runner import simulate

    try:
        config = ClusterConfig(prefill=args.prefill, decode=args.decode, mixed=args.mixed, policy=args.policy,
                               transport=args.transport, max_queue=args.max_queue, hop_s=args.hop_ms / 1000,
                               router=args.router, host_cores=args.host_cores, nodes_per_host=args.nodes_per_host,
                               step_jitter=args.step_jitter, seed=args.jitter_seed, **routing_options(args))
        profiles = role_profiles(args)
        requests, run = load_requests(args)
        result = simulate(requests, config, profiles, {**run, "label": args.label},
                          parse_percentiles(args.percentiles), parse_slos(args.slo))
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"splitserve simulate: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    pools = ", ".join(f"{role} x{p['nodes']} {p['mean_utilisation']:.0%} busy" for role, p in result["sim"]["pools"].items())
    print(f"simulated {len(requests)} requests in {result['sim']['wall_s']:.1f}s ({pools}); errors: "
          f"{result['sim']['errors'] or 'none'}")
    if args.json:
        save_json(result, args.json)
    return 0
