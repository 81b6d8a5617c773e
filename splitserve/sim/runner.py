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


def fresh(requests: Sequence[SimRequest], extra_tokens: int = 0) -> list[SimRequest]:
    """Copies in their initial state (a request list can drive several simulations), each prompt
    `extra_tokens` longer."""
    return [SimRequest(r.rid, r.prompt_tokens + extra_tokens, r.target, r.arrival_s, r.cached_tokens, r.hash_ids)
            for r in requests]


def prompt_special_tokens(config: ClusterConfig, profiles: dict[str, Profile]) -> int:
    """What the router's encode adds to every prompt (a BOS), from the profiles of the pools in use."""
    used = {profiles[role].engine.prompt_special_tokens for role, n in
            (("prefill", config.prefill), ("decode", config.decode), ("mixed", config.mixed)) if n and role in profiles}
    if len(used) > 1:
        raise ValueError(f"the pools' profiles disagree on the tokens a prompt gains ({sorted(used)}): one model per cluster")
    return used.pop() if used else 0


def simulate(requests: Sequence[SimRequest], config: ClusterConfig, profiles: dict[str, Profile],
             run: dict | None = None, percentiles: Sequence[float] = (50.0, 99.0),
             slos_ms: dict[str, float] | None = None) -> dict:
    started = time.perf_counter()
    extra = prompt_special_tokens(config, profiles)
    with gc_paused():
        reqs = fresh(requests, extra)  # the engine computes the prompt the router encoded, BOS included
        sim = ClusterSim(config, profiles)
        sim.run(reqs)
        for r in reqs if extra else ():
            r.prompt_tokens -= extra  # the client counts its prompt without them
    cluster = _jsonable(dataclasses.asdict(config))
    run = {**(run or {}), "cluster": cluster, "profiles": {role: p.meta for role, p in profiles.items()}}
    return result_dict(reqs, sim, run, percentiles, slos_ms or {}, time.perf_counter() - started)
