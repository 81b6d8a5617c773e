"""`splitserve plan`: how many prefill, decode and mixed nodes, of which kind, with which policy.

Given a workload at a target rate (as `splitserve bench` names it), SLOs (TTFT, TPOT in ms)
to be met by a share of the requests (--attainment, e.g. 0.99 = at p99), and node kinds with
their profiles and costs (--kind NAME=PROFILE.json[:COST]), simulates configurations
(splitserve simulate) and reports the cheapest that meets the SLOs, the goodput frontier
(--plot), and the Helm values for it (--helm).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="search pool sizes and policies that meet SLOs at least cost",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from splitserve.sim.args import add_cluster_arguments, add_workload_arguments

    p.add_argument("--kind", action="append", default=[], metavar="NAME=PROFILE.json[:COST]",
                   help="a node kind (repeatable); cost per node, default 1")
    p.add_argument("--slo", required=True, help="e.g. ttft:2000,tpot:200 (ms)")
    p.add_argument("--attainment", type=float, default=0.99, help="share of requests that must meet every SLO")
    p.add_argument("--policies", default="least_loaded,splitwise")
    p.add_argument("--max-nodes", type=int, default=64)
    p.add_argument("--helm", action="store_true", help="print helm/splitserve values for the chosen configuration")
    p.add_argument("--json", metavar="FILE", help="every simulated configuration, the frontier and the choice")
    p.add_argument("--plot", metavar="PNG", help="goodput vs cost, the frontier marked")
    add_cluster_arguments(p)
    add_workload_arguments(p)
    p.set_defaults(func=handle)


def parse_kind(text: str):
    from splitserve.sim.planner import NodeKind
    from splitserve.sim.profile import load_profile

    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--kind {text!r}: expected NAME=PROFILE.json[:COST]")
    path, colon, cost = rest.rpartition(":")
    try:
        return NodeKind(name, load_profile(path), float(cost)) if colon else NodeKind(name, load_profile(rest))
    except ValueError:
        if not colon:
            raise
        return NodeKind(name, load_profile(rest))


def handle(args: argparse.Namespace) -> int:
    from splitserve.bench.metrics import parse_slos
    from splitserve.sim.args import load_requests, routing_options
    from splitserve.sim.cluster import ClusterConfig
    from splitserve.sim.planner import PlanConfig, Planner, helm_values, summary_table

    try:
        kinds = [parse_kind(k) for k in args.kind] or ([parse_kind(f"default={args.profile}")] if args.profile else [])
        base = ClusterConfig(transport=args.transport, max_queue=args.max_queue, hop_s=args.hop_ms / 1000,
                             router=args.router, host_cores=args.host_cores, nodes_per_host=args.nodes_per_host,
                             step_jitter=args.step_jitter, seed=args.jitter_seed, **routing_options(args))
        config = PlanConfig(parse_slos(args.slo), args.attainment, tuple(p for p in args.policies.split(",") if p),
                            args.max_nodes, base)
        if args.num_requests is None and args.duration_s is None and not args.replay:
            args.num_requests = 2000
        requests, run = load_requests(args)
        planner = Planner(requests, kinds, config, log=lambda line: print(line, file=sys.stderr))
        chosen = planner.search()
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"splitserve plan: error: {e}", file=sys.stderr)
        return 2
    frontier = planner.frontier()
    print("goodput frontier:\n" + summary_table(frontier))
    if chosen is None:
        print(f"no configuration of at most {args.max_nodes} nodes meets {args.slo} for {args.attainment:.0%} of requests")
    else:
        print("cheapest meeting the SLOs:\n" + summary_table([chosen]))
        if args.helm:
            print(helm_values(chosen, args.max_queue, kinds))
    _save(args, planner, frontier, chosen, run)
    return 0 if chosen is not None else 1


def _save(args, planner, frontier, chosen, run) -> None:
    if args.json:
        from splitserve.bench.report import save_json

        save_json({"run": run, "slo": args.slo, "attainment": args.attainment,
                   "chosen": chosen.row() if chosen else None, "frontier": [c.row() for c in frontier],
                   "evaluated": [c.row() for c in planner.seen.values()]}, args.json)
    if args.plot:
        from splitserve.sim.plots import plot_frontier

        plot_frontier(list(planner.seen.values()), frontier, chosen, args.plot,
                      f"{run.get('workload')} at {run.get('request_rate')} req/s, SLO {args.slo} @ {args.attainment:.0%}")
