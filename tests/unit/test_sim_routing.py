"""The simulator's router makes router/cluster/policies.py's choices: the exact router calls
the policies themselves; the heap index must choose the same node for the same snapshot."""

from __future__ import annotations

import numpy as np
import pytest

from router.cluster.policies import NoRoute, SplitwiseConfig
from splitserve.sim.cluster import ClusterConfig, build_nodes
from splitserve.sim.request import SimRequest
from splitserve.sim.routing import ExactRouter
from splitserve.sim.routing_index import IndexRouter
from tests.unit.sim_support import all_roles, linear_profile


def random_state(routers, nodes, rng) -> None:
    """The same random node state and router counters in every router."""
    for n in nodes:
        n.free_blocks = int(rng.integers(0, n.num_blocks + 1))
        for _ in range(int(rng.integers(0, 3))):
            n.waiting.append(SimRequest(0, int(rng.integers(1, 3000)), 1, 0.0))
    for r in routers:
        for n in nodes:
            n.touch()
        r.poll()
    for n in nodes:
        tokens, decodes = int(rng.choice([0, 0, 500, 1500, 2500])), int(rng.integers(0, 4))
        for r in routers:
            r.track(n, prefill_tokens=tokens, decodes=decodes)


@pytest.mark.parametrize("policy", ["least_loaded", "round_robin", "splitwise"])
@pytest.mark.parametrize("pools", [(5, 7, 0), (3, 4, 3), (0, 0, 6)])
def test_index_router_chooses_as_the_policies(policy, pools):
    profile = linear_profile(num_blocks=64)
    config = ClusterConfig(*pools, policy=policy)
    nodes = build_nodes(config, all_roles(profile))
    rng = np.random.default_rng(sum(pools))
    splitwise = SplitwiseConfig(prefill_overload_tokens=2000, decode_min_free_ratio=0.2)
    exact, index = ExactRouter(nodes, policy, splitwise), IndexRouter(nodes, policy, splitwise)
    for trial in range(60):
        if trial % 5 == 0:
            for n in nodes:
                n.waiting.clear()
            random_state([exact, index], nodes, rng)
        req = SimRequest(trial, int(rng.integers(1, 400)), int(rng.integers(1, 400)), 0.0)
        exclude = {nodes[int(rng.integers(len(nodes)))].name} if trial % 7 == 3 else set()
        try:
            want = exact.route(req, exclude)
        except NoRoute:
            with pytest.raises(NoRoute):
                index.route(req, exclude)
            continue
        assert index.route(req, exclude) == want


def test_routing_sees_stats_only_after_a_poll():
    profile = linear_profile(num_blocks=64)
    nodes = build_nodes(ClusterConfig(0, 0, 2), all_roles(profile))
    router = ExactRouter(nodes, "least_loaded")
    router.poll()
    nodes[0].free_blocks = 0
    nodes[0].touch()
    assert router.view(nodes[0]).free_blocks == 64
    router.poll()
    assert router.view(nodes[0]).free_blocks == 0
