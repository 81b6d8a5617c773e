"""One simulated run: requests + a cluster configuration + profiles -> bench-shaped result."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from splitserve.bench.benchmark import _jsonable
from splitserve.sim.cluster import ClusterConfig, ClusterSim
from splitserve.sim.profile import Profile
from splitserve.sim.request import SimRequest, gc_paused
from splitserve.sim.results import result_dict


def fresh(requests: Sequence[SimRequest]) -> list[SimRequest]:
    """Copies in their initial state (a request list can drive several simulations)."""
    return [SimRequest(r.rid, r.prompt_tokens, r.target, r.arrival_s, r.cached_tokens, r.hash_ids) for r in requests]


def simulate(requests: Sequence[SimRequest], config: ClusterConfig, profiles: dict[str, Profile],
             run: dict | None = None, percentiles: Sequence[float] = (50.0, 99.0),
             slos_ms: dict[str, float] | None = None) -> dict:
    started = time.perf_counter()
    with gc_paused():
        reqs = fresh(requests)
        sim = ClusterSim(config, profiles)
        sim.run(reqs)
    cluster = _jsonable(dataclasses.asdict(config))
    run = {**(run or {}), "cluster": cluster, "profiles": {role: p.meta for role, p in profiles.items()}}
    return result_dict(reqs, sim, run, percentiles, slos_ms or {}, time.perf_counter() - started)
