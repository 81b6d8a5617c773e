"""A fingerprint of the simulator's results, to check that a speed change changes nothing.

    python benchmarks/simulator_identity.py            # before the change, then after: the lines must match

Four fleets and policies (least_loaded over 270 prefill + 730 decode nodes, splitwise with a mixed
pool, colocated nodes only, round_robin), Azure conversation lengths, Poisson; for each, a sha256
over every request's first-token time, finish time and error, and the median TTFT. Floats are
compared bit for bit: an optimisation that reorders a sum or a tie shows here. About 15 s.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

PROFILE = Path(__file__).parent / "results" / "profile_small_cpu.json"
# (policy, prefill, decode, mixed, request rate, requests)
FLEETS = (("least_loaded", 270, 730, 0, 30.0, 30000), ("splitwise", 20, 50, 10, 3.0, 20000),
          ("least_loaded", 0, 0, 40, 1.5, 10000), ("round_robin", 10, 30, 0, 1.2, 8000))


def fingerprint(policy: str, prefill: int, decode: int, mixed: int, rate: float, num: int) -> tuple[str, float]:
    from splitserve.bench.arrivals import ArrivalConfig
    from splitserve.bench.workloads import WorkloadConfig
    from splitserve.sim.cluster import ClusterConfig
    from splitserve.sim.profile import load_profile
    from splitserve.sim.runner import simulate
    from splitserve.sim.workload import SimWorkload, make_requests

    profile = load_profile(PROFILE)
    requests = make_requests(SimWorkload(WorkloadConfig(name="azure-conv"), ArrivalConfig(kind="poisson", rate=rate), num))
    config = ClusterConfig(prefill=prefill, decode=decode, mixed=mixed, policy=policy, max_queue=10 ** 9)
    roles = {role: profile for role, n in (("prefill", prefill), ("decode", decode), ("mixed", mixed)) if n}
    result = simulate(requests, config, roles, {}, (50.0, 99.0))
    digest = hashlib.sha256(repr([(r.first_token_s, r.finish_s, r.error) for r in requests]).encode()).hexdigest()
    return digest[:16], result["median_ttft_ms"]


def main() -> None:
    for fleet in FLEETS:
        started = time.process_time()
        digest, median_ttft = fingerprint(*fleet)
        print(*fleet, digest, repr(median_ttft), f"({time.process_time() - started:.1f} s CPU)")


if __name__ == "__main__":
    main()
