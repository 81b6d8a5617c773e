"""The simulated node schedules exactly as splitserve/engine/scheduler.py: the same tokens and
sequences per step, the same preemptions, the same finishing steps (fast and exact paths)."""

from __future__ import annotations

import numpy as np
import pytest

from splitserve.engine.block_pool import BlockPool
from splitserve.engine.request import Request
from splitserve.engine.sampling import SamplingParams
from splitserve.engine.scheduler import Scheduler
from splitserve.sim.node import NodeSim
from splitserve.sim.request import SimRequest
from tests.unit.sim_support import linear_profile


def real_step(scheduler: Scheduler, outputs: dict) -> tuple[int, int, set]:
    """Engine.step without the model: schedule, commit, append a token where one is sampled."""
    plan = scheduler.schedule()
    scheduler.commit(plan)
    done = set()
    for chunk in plan.chunks:
        req = chunk.request
        if req.num_computed_tokens == req.num_tokens:
            req.output_token_ids.append(7)
            if len(req.output_token_ids) >= req.params.max_tokens:
                scheduler.finish(req)
                done.add(int(req.request_id))
    return plan.num_tokens, len(plan.chunks), done


def run_both(lengths, arrivals_at_step, num_blocks: int, budget: int, max_seqs: int):
    profile = linear_profile(num_blocks=num_blocks, budget=budget, max_num_seqs=max_seqs)
    node = NodeSim("mixed-00000", "mixed", profile)
    scheduler = Scheduler(BlockPool(num_blocks, 16, enable_prefix_caching=False), max_seqs, budget)
    step, trace_real, trace_sim, pending = 0, [], [], sorted(zip(arrivals_at_step, range(len(lengths))))
    while pending or scheduler.has_work():
        while pending and pending[0][0] <= step:
            _, i = pending.pop(0)
            prompt, out = lengths[i]
            scheduler.add(Request(str(i), [1] * prompt, SamplingParams(max_tokens=out)))
            req = SimRequest(i, prompt, out, 0.0)
            node.add_request(req)
        if scheduler.has_work():
            trace_real.append(real_step(scheduler, {}))
            _, finished, _ = node.step()
            trace_sim.append((node.last_tokens, node.last_seqs, {r.rid for r in finished}))
        step += 1
        assert step < 20_000
    return trace_real, trace_sim, node, scheduler


@pytest.mark.parametrize("num_blocks,budget,max_seqs", [(4096, 2048, 64), (40, 64, 8), (24, 512, 16)])
def test_same_schedule_as_the_engine_scheduler(num_blocks, budget, max_seqs):
    rng = np.random.default_rng(num_blocks)
    lengths = [(int(rng.integers(1, 200)), int(rng.integers(1, 60))) for _ in range(40)]
    arrivals = sorted(int(a) for a in rng.integers(0, 150, size=len(lengths)))
    real, sim, node, scheduler = run_both(lengths, arrivals, num_blocks, budget, max_seqs)
    assert sim == real
    assert node.free_blocks == node.num_blocks == scheduler.pool.num_free


def test_a_small_pool_preempts_and_still_finishes_everything():
    lengths = [(100, 40)] * 6  # 6 x 140 tokens need 60 blocks of 16; the pool has 24
    real, sim, node, _ = run_both(lengths, [0] * 6, num_blocks=24, budget=512, max_seqs=16)
    assert sim == real
    assert node.num_preemptions > 0
    assert set().union(*(done for _, _, done in sim)) == set(range(6))


def test_decode_entries_past_max_num_seqs_wait_as_in_the_engine():
    """A decode node's prefilled requests (Scheduler.add_prefilled, NodeSim.admit_prefilled): past max_num_seqs
    they wait with their blocks, and the steps match the engine's."""
    profile = linear_profile(num_blocks=400, budget=256, max_num_seqs=3)
    node = NodeSim("decode-00000", "decode", profile)
    pool = BlockPool(400, 16, enable_prefix_caching=False)
    scheduler = Scheduler(pool, 3, 256)
    lengths = [(40, 5), (17, 9), (70, 3), (33, 6), (5, 4), (90, 2)]
    for i, (prompt, out) in enumerate(lengths):
        req = Request(str(i), [1] * prompt, SamplingParams(max_tokens=out), output_token_ids=[7])
        req.block_ids, req.num_computed_tokens = pool.allocate(-(-prompt // 16)), prompt
        scheduler.add_prefilled(req)
        sim_req = SimRequest(i, prompt, out, 0.0)
        sim_req.outputs = 1
        node.admit_prefilled(sim_req, node.reserve(prompt))
    assert (len(scheduler.running), len(scheduler.waiting)) == (3, 3) == (node.num_running, len(node.waiting))
    real, sim = [], []
    while scheduler.has_work():
        real.append(real_step(scheduler, {}))
        _, finished, _ = node.step()
        sim.append((node.last_tokens, node.last_seqs, {r.rid for r in finished}))
        assert len(real) < 1000
    assert sim == real and max(seqs for _, seqs, _ in real) == 3
    assert node.free_blocks == node.num_blocks == pool.num_free
