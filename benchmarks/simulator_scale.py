"""How fast the simulator is: N requests (Azure conversation lengths, Poisson) over a fleet.

    python benchmarks/simulator_scale.py --profile benchmarks/results/profile_small_cpu.json \
        --requests 1000000 --prefill 250 --decode 750 --rate 50

Wall and CPU time of generating the requests from the bench workload and of the simulation,
and of both together (the 2-minute target counts both), and the simulated run's headline
metrics; the router's queue limit is lifted (a 1,000-node fleet's router is configured for it).
Writes benchmarks/results/simulator_scale.json (--out). Run it alone on the machine:
`flock -x /tmp/splitserve-timing.lock python benchmarks/simulator_scale.py ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "simulator_scale.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--prefill", type=int, default=250)
    parser.add_argument("--decode", type=int, default=750)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--policy", default="least_loaded")
    parser.add_argument("--workload", default="azure-conv")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from splitserve.bench.arrivals import ArrivalConfig
    from splitserve.bench.provenance import portable
    from splitserve.bench.workloads import WorkloadConfig
    from splitserve.sim.cluster import ClusterConfig
    from splitserve.sim.profile import load_profile
    from splitserve.sim.runner import simulate
    from splitserve.sim.workload import SimWorkload, make_requests

    profile = load_profile(args.profile)
    load, cpu0, wall0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    requests = make_requests(SimWorkload(WorkloadConfig(name=args.workload), ArrivalConfig(kind="poisson", rate=args.rate),
                                         args.requests))
    generate_s, cpu1, wall1 = time.perf_counter() - wall0, time.process_time(), time.perf_counter()
    config = ClusterConfig(prefill=args.prefill, decode=args.decode, policy=args.policy, max_queue=10 ** 9)
    result = simulate(requests, config, {"prefill": profile, "decode": profile}, {"workload": args.workload,
                      "request_rate": args.rate}, (50.0, 99.0))
    cpu2, wall2 = time.process_time(), time.perf_counter()
    report = {"benchmark": "simulator_scale", "requests": args.requests, "nodes": args.prefill + args.decode,
              "prefill": args.prefill, "decode": args.decode, "policy": args.policy, "rate": args.rate,
              "workload": args.workload, "profile": portable(args.profile), "generate_requests_s": round(generate_s, 1),
              "generate_cpu_s": round(cpu1 - cpu0, 1), "simulate_wall_s": round(wall2 - wall1, 1),
              "simulate_cpu_s": round(cpu2 - cpu1, 1), "total_wall_s": round(wall2 - wall0, 1),
              "total_cpu_s": round(cpu2 - cpu0, 1), "loadavg_1m": [load, os.getloadavg()[0]],
              "simulated_duration_s": round(result["duration"], 1),
              "result": {k: result[k] for k in ("completed", "failed", "request_throughput", "median_ttft_ms",
                                                "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms")},
              "pools": result["sim"]["pools"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
