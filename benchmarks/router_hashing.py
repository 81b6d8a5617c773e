"""What hashing prompts costs the router's event loop per request, in process (no servers, no network).

A routed request's prompt is hashed into the prefix cache's chained block hashes (router/cluster/prefix_index.py) to
score prefix hits: by `cache_aware` (the prefill nodes' hits), by decode affinity and conditional disaggregation
(router/cluster/local_prefill.py: the decode nodes' hits), and when the request ends, to add the prompt and its
output to the holdings of the decode node it ran on. This times those steps for one request as the orchestrator
runs them (policy, LocalPrefill.route, LocalPrefill.record) on views of 1 prefill + `--decode` decode nodes, each
decode node holding the earlier turn of the conversation (the prompt minus its last `--new` tokens).

    python benchmarks/router_hashing.py [--tokens 1024 4096 16384] [--repeats 200] [--out FILE]

Runs against whatever `router` package is first on the path: to compare commits, run it from a worktree of each.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from splitserve import labels
from splitserve.engine import SamplingParams
from router.cluster.holdings import BlockHoldings
from router.cluster.jobs import Job
from router.cluster.local_prefill import LocalPrefill
from router.cluster.nodes import NodeView
from router.cluster.orchestrator import Orchestrator
from router.cluster.policies import get_policy
from router.cluster.prefix_index import block_hashes

BLOCK = 16


def nodes(decodes: int, earlier_turn: list[int]) -> list[NodeView]:
    views = [NodeView("p:1", labels.ROLE_PREFILL, healthy=True, total_blocks=1 << 16, block_size=BLOCK,
                      prefix_caching=True)]
    for i in range(decodes):
        view = NodeView(f"d{i}:1", labels.ROLE_DECODE, healthy=True, total_blocks=1 << 16, block_size=BLOCK,
                        prefix_caching=True, holdings=BlockHoldings())
        view.holdings.add(block_hashes(earlier_turn, BLOCK), view.total_blocks)
        views.append(view)
    return views


def one_request(policy, local: LocalPrefill, views: list[NodeView], prompt: list[int], output: list[int]) -> float:
    """Seconds of router CPU for one request's hashing steps (a fresh Job, as the front makes one per request)."""
    job = Job("r", prompt, SamplingParams(max_tokens=len(output)))
    start = time.perf_counter()
    route = local.route(job, policy(views, Orchestrator.route_request(job)), views)
    local.record(job, output, route)
    return time.perf_counter() - start


def measure(policy_name: str, tokens: int, decodes: int, new: int, repeats: int) -> dict:
    prompt = [(7 * i) % 30000 for i in range(tokens)]
    output = list(range(100, 164))
    policy, local = get_policy(policy_name), LocalPrefill(0)
    views = nodes(decodes, prompt[:-new])
    times = [one_request(policy, local, [replace(v) for v in views], prompt, output) for _ in range(repeats)]
    return {"policy": policy_name, "prompt_tokens": tokens, "decode_nodes": decodes,
            "median_us": round(statistics.median(times) * 1e6, 1),
            "p90_us": round(sorted(times)[int(0.9 * repeats)] * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--decode", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--policies", nargs="+", default=["least_loaded", "cache_aware"])
    parser.add_argument("--new", type=int, default=64, help="prompt tokens the decode nodes do not hold")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [measure(p, t, d, args.new, args.repeats) for p in args.policies for t in args.tokens for d in args.decode]
    for row in rows:
        print(json.dumps(row))
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        args.out.write_text(json.dumps({"commit": commit, "machine": platform.machine(), "block_size": BLOCK,
                                        "repeats": args.repeats, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
