"""The simulated cluster against what the profile predicts and what the router does."""

from __future__ import annotations

import numpy as np
import pytest

import splitserve.sim.jump as jump
from splitserve.sim.cluster import ClusterConfig, ClusterSim
from splitserve.sim.request import SimRequest
from tests.unit.sim_support import all_roles, linear_profile

HOP = 0.001


def run(config: ClusterConfig, requests: list[SimRequest], **profile_kwargs) -> ClusterSim:
    sim = ClusterSim(config, all_roles(linear_profile(**profile_kwargs)))
    sim.run(requests)
    return sim


def test_one_colocated_request_takes_what_the_profile_says():
    profile = linear_profile()
    req = SimRequest(0, 300, 5, 0.0)
    run(ClusterConfig(0, 0, 1, hop_s=HOP), [req])
    prefill = profile.step.prefill_s(300)
    assert req.first_token_s == pytest.approx(4 * HOP + prefill)
    decodes = sum(profile.step.decode_s(1, 300 + k) for k in range(4))  # tokens 2..5, context 301..304
    assert req.finish_s == pytest.approx(req.first_token_s + decodes)


def test_one_disaggregated_request_adds_the_reservation_and_the_transfer():
    profile = linear_profile()
    short, long = SimRequest(0, 200, 1, 0.0), SimRequest(1, 2000, 1, 10.0)
    run(ClusterConfig(1, 1, 0, hop_s=HOP), [short, long])
    kv = 16384
    one_shot = profile.step.prefill_s(200) + profile.transfer_s("torch", 200 * kv)
    assert short.first_token_s == pytest.approx(6 * HOP + one_shot)
    step = profile.step.prefill_s(2000)
    layerwise = max(step + profile.transfer_s("torch", 2000 * kv / 8), step / 8 + profile.transfer_s("torch", 2000 * kv))
    assert long.first_token_s - long.arrival_s == pytest.approx(6 * HOP + layerwise)


def test_a_later_turn_moves_only_the_kv_its_decode_node_lacks():
    """As Reserve with the prompt (ec6647f): the decode node takes the leading blocks it holds from an earlier
    request and the prefill node sends the KV after them; a prompt it holds nothing of moves whole."""
    first = SimRequest(0, 2000, 4, 0.0, hash_ids=(1, 2, 3, 4))
    later = SimRequest(1, 2000, 4, 10.0, hash_ids=(1, 2, 3, 9))  # 3 blocks of 512 tokens in common
    other = SimRequest(2, 2000, 4, 20.0, hash_ids=(7, 8, 9, 10))
    sim = run(ClusterConfig(1, 1, 0, hop_s=HOP), [first, later, other])
    assert (first.sent_tokens, later.sent_tokens, other.sent_tokens) == (2000, 2000 - 3 * 512, 2000)
    profile, kv = sim.nodes[0].profile, 16384
    whole, _, layers = sim._transfer_times(profile, 2000, later.sent_tokens)
    assert whole == pytest.approx(profile.transfer_s("torch", later.sent_tokens * kv)) and layers == 8


@pytest.mark.parametrize("router", ["exact", "index"])
@pytest.mark.parametrize("affinity", [True, False], ids=["affinity", "no_affinity"])
def test_decode_affinity_sends_a_later_turn_to_the_decode_node_holding_it(router, affinity):
    """1 prefill + 2 decode nodes, one request at a time: least_loaded alone alternates the decode nodes (the least
    recently routed wins ties), so the later turn would land on the other one and move its whole prompt."""
    first = SimRequest(0, 2000, 4, 0.0, hash_ids=(1, 2, 3, 4))
    later = SimRequest(1, 2000, 4, 10.0, hash_ids=(1, 2, 3, 9))
    run(ClusterConfig(1, 2, 0, hop_s=HOP, router=router, decode_affinity=affinity), [first, later])
    assert (later.decode_node is first.decode_node) == affinity
    assert later.sent_tokens == (2000 - 3 * 512 if affinity else 2000)


def test_the_decode_affinity_slack_keeps_a_later_turn_off_a_holder_that_is_busier():
    """The holder of turn 1 still decodes it when turn 2 comes: 1 request more than the other decode node, more than
    --decode-affinity-slack 0 allows, so turn 2 goes to the policy's node (with the default 2 it goes to the holder)."""
    for slack, to_holder in ((0, False), (2, True)):
        first = SimRequest(0, 2000, 400, 0.0, hash_ids=(1, 2, 3, 4))
        later = SimRequest(1, 2000, 4, 5.0, hash_ids=(1, 2, 3, 9))
        run(ClusterConfig(1, 2, 0, hop_s=HOP, decode_affinity_slack=slack), [first, later])
        assert (later.decode_node is first.decode_node) == to_holder


def test_conditional_disaggregation_runs_what_is_left_short_on_the_decode_node_holding_the_rest():
    """--max-local-prefill-tokens 600: a short prompt runs whole on its decode node; a later turn whose first 3
    blocks its decode node holds (from turn 1, split) has 464 tokens left: it runs there too; a long new prompt
    stays split."""
    short = SimRequest(0, 300, 4, 0.0)
    first = SimRequest(1, 2000, 4, 10.0, hash_ids=(1, 2, 3, 4))
    later = SimRequest(2, 2000, 4, 20.0, hash_ids=(1, 2, 3, 9))
    other = SimRequest(3, 2000, 4, 30.0, hash_ids=(7, 8, 9, 10))
    run(ClusterConfig(1, 2, 0, hop_s=HOP, max_local_prefill_tokens=600), [short, first, later, other])
    assert short.prefill_node is short.decode_node and short.decode_node.role == "decode"
    assert first.prefill_node.role == "prefill"
    assert later.prefill_node is later.decode_node is first.decode_node and later.cached_tokens == 3 * 512
    assert other.prefill_node.role == "prefill"
    assert all(r.finish_s is not None and not r.error for r in (short, first, later, other))


def test_a_queue_builds_when_the_rate_exceeds_capacity():
    def ttfts(gap_s: float) -> np.ndarray:
        reqs = [SimRequest(i, 1000, 2, i * gap_s) for i in range(60)]
        run(ClusterConfig(0, 0, 1, max_queue=1000), reqs)
        return np.array([r.first_token_s - r.arrival_s for r in reqs])

    step = linear_profile().step.prefill_s(1000)
    under, over = ttfts(3 * step), ttfts(step / 3)
    assert under.max() < 2 * under.min()
    assert over[-10:].mean() > 10 * over[:5].mean()
    assert over[5:15].mean() < over[25:35].mean() < over[45:55].mean()  # it keeps growing


def test_load_shedding_refuses_beyond_max_queue():
    reqs = [SimRequest(i, 100, 50, 0.0) for i in range(10)]
    sim = run(ClusterConfig(0, 0, 1, max_queue=3), reqs)
    refused = [r for r in reqs if r.error]
    assert len(refused) == 7 and all(r.error.startswith("RESOURCE_EXHAUSTED") for r in refused)
    assert sim.inflight == 0


def test_full_decode_pools_retry_then_fail_and_blocks_all_return():
    # a 500-token prompt reserves 32 of the decode node's 40 blocks: one at a time; the first
    # decodes for over a second, longer than the 3 retries' backoff (0.05 + 0.1 + 0.2 s)
    reqs = [SimRequest(i, 500, 100, 0.0) for i in range(3)]
    sim = run(ClusterConfig(1, 1, 0), reqs, num_blocks=40)
    assert not reqs[0].error
    assert [r.retries for r in reqs[1:]] == [3, 3]
    assert all(r.error.startswith("RESOURCE_EXHAUSTED") and "reserve" in r.error for r in reqs[1:])
    assert all(n.free_blocks == n.num_blocks for n in sim.nodes)


def test_jumps_change_nothing(monkeypatch):
    rng = np.random.default_rng(3)
    reqs = [(int(rng.integers(20, 600)), int(rng.integers(1, 300)), i * 0.05) for i in range(300)]

    def times(max_steps: int) -> list:
        monkeypatch.setattr(jump, "MAX_STEPS", max_steps)
        sims = [SimRequest(i, p, o, t) for i, (p, o, t) in enumerate(reqs)]
        run(ClusterConfig(1, 2, 1, policy="splitwise", poll_interval_s=1e6), sims)
        return [r.error for r in sims], np.array([(r.first_token_s or -1, r.finish_s or -1) for r in sims])

    (errors_jumping, jumping), (errors_stepping, stepping) = times(512), times(1)
    assert errors_jumping == errors_stepping and errors_jumping.count("") > 100
    np.testing.assert_allclose(jumping, stepping, rtol=1e-9, atol=1e-9)


def _steps_by_bisection(j: jump.Jump, t: float) -> int:
    lo, hi = 1, j.steps
    while lo < hi:
        mid = (lo + hi) // 2
        if j.start_s + j.elapsed_s(mid) >= t:
            hi = mid
        else:
            lo = mid + 1
    return lo


def test_a_cut_jump_ends_at_the_step_a_bisection_of_its_step_ends_finds():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        j = jump.Jump(float(rng.uniform(0, 1e4)), int(rng.integers(2, 513)), float(rng.uniform(1e-4, 0.2)),
                      float(rng.choice([0.0, rng.uniform(0, 1e-4)])), 1)
        ends = [j.start_s + j.elapsed_s(m) for m in (1, j.steps // 2, j.steps)]
        for t in (j.start_s, *ends, *(np.nextafter(e, -np.inf) for e in ends), *(np.nextafter(e, np.inf) for e in ends),
                  float(rng.uniform(j.start_s, ends[-1] * 1.01))):
            assert j.steps_by(t) == _steps_by_bisection(j, t)
