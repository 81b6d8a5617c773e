"""--step-jitter: decode steps drawn from the profile's measured spread, seeded."""

from __future__ import annotations

import dataclasses

import pytest

from splitserve.sim.cluster import ClusterConfig
from splitserve.sim.jitter import StepJitter
from splitserve.sim.request import SimRequest
from splitserve.sim.runner import simulate
from tests.unit.sim_support import all_roles, linear_profile

RATIOS = [0.9, 1.0, 1.0, 1.1, 1.6]


def _run(profile, **config) -> dict:
    requests = [SimRequest(i, 100 + 7 * i, 40, 0.3 * i) for i in range(12)]
    return simulate(requests, ClusterConfig(**{"prefill": 1, "decode": 1, **config}), all_roles(profile))


def test_decode_steps_are_drawn_from_the_measured_ratios_and_seeded():
    plain = linear_profile()
    spread = dataclasses.replace(plain, points={"decode_step_ratios": RATIOS})
    median = _run(spread)
    assert median["median_tpot_ms"] == _run(plain)["median_tpot_ms"]  # off by default
    jittered = _run(spread, step_jitter=True)
    assert jittered["requests"] == _run(spread, step_jitter=True)["requests"]
    assert jittered["requests"] != _run(spread, step_jitter=True, seed=1)["requests"]
    assert jittered["p99_tpot_ms"] > median["p99_tpot_ms"]
    assert jittered["median_ttft_ms"] == pytest.approx(median["median_ttft_ms"], rel=0.2)


def test_step_jitter_needs_a_measured_spread():
    with pytest.raises(ValueError, match="decode_step_ratios"):
        _run(linear_profile(), step_jitter=True)
    with pytest.raises(ValueError, match="> 0"):
        StepJitter([0.0, 1.0], 0, "n")
    draws = StepJitter(RATIOS, 3, "decode-00000")
    assert {draws() for _ in range(200)} == set(RATIOS)
