"""benchmarks/simulator_validation.py's calibration arithmetic: the per-kind speed scaling and
the linear solve that turns an idle cluster's TTFT and TPOT into hop cost and speeds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from tests.unit.sim_support import linear_profile

from splitserve.sim.request import SimRequest
from splitserve.sim.runner import simulate

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "simulator_validation.py"
_SPEC = importlib.util.spec_from_file_location("simulator_validation", _PATH)
validation = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = validation  # dataclasses look their module up
_SPEC.loader.exec_module(validation)


def test_prompt_steps_take_the_prefill_factor_and_decode_only_steps_the_decode_factor():
    profile = linear_profile()
    fast = validation.scaled(profile, {"prefill": 2.0, "decode": 0.5}).step
    assert fast.seconds(512, 1, 512 * 512) == pytest.approx(2.0 * profile.step.seconds(512, 1, 512 * 512))
    assert fast.seconds(4, 4, 0.0, 400) == pytest.approx(0.5 * profile.step.seconds(4, 4, 0.0, 400))
    assert fast.decode_s(4, 100) == pytest.approx(0.5 * profile.step.decode_s(4, 100))
    assert fast.min_step_s == pytest.approx(0.5 * profile.step.min_step_s)
    same = validation.scaled(profile, 1.5).step  # older runs: one factor for both
    assert (same.prefill, same.decode) == (1.5, 1.5)


def _bench_run(prompt: int, output: int, num: int) -> dict:
    """A measured-run dict as the simulator replays it: requests alone, 5 s apart."""
    requests = [SimRequest(i, prompt, output, 5.0 * i) for i in range(num)]
    run = simulate(requests, _config("1P+1D"), {"prefill": linear_profile(), "decode": linear_profile()})
    return {**run, "label": "calibration"}


def _config(setup: str):
    from splitserve.sim.cluster import ClusterConfig

    counts = validation.SETUPS[setup]
    return ClusterConfig(prefill=counts["prefill"], decode=counts["decode"], mixed=counts["colocated"], hop_s=0.004)


def test_the_calibration_recovers_the_speeds_that_made_the_idle_runs():
    """Idle runs simulated at known factors: solving for hop, prefill and decode in turn finds them."""
    truth = {"prefill": 1.3, "decode": 0.8, "hop_s": 0.004}
    profile = linear_profile()
    short, long = _bench_run(64, 4, 4), _bench_run(512, 24, 3)
    short = validation.predict({**short, "speed_factor": truth, "hop_s": truth["hop_s"]}, "1P+1D", profile, 0)
    long = validation.predict({**long, "speed_factor": truth, "hop_s": truth["hop_s"]}, "1P+1D", profile, 0)
    got = validation.solve_speed({**short, "label": "s"}, {**long, "label": "l"}, "1P+1D", profile)
    assert got["prefill"] == pytest.approx(1.3, rel=1e-3)
    assert got["decode"] == pytest.approx(0.8, rel=1e-3)
    assert got["hop_s"] == pytest.approx(0.004, rel=1e-2)
    fixed_hop = validation.solve_speed(None, {**long, "label": "l"}, "1P+1D", profile, hop_s=0.004)
    assert fixed_hop["prefill"] == pytest.approx(1.3, rel=1e-3) and fixed_hop["hop_s"] == 0.004
