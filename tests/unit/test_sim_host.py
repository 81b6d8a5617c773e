"""Nodes sharing a host's cores (splitserve/sim/host.py): the stretch model and its effect."""

import dataclasses

import pytest

from splitserve.sim.cluster import ClusterConfig
from splitserve.sim.host import HostModel, assign_hosts
from splitserve.sim.profile import Profile
from splitserve.sim.request import SimRequest
from splitserve.sim.runner import simulate
from tests.unit.sim_support import linear_profile as make_profile


def test_stretch_uses_measurements_then_oversubscription():
    host = HostModel(cores=2, threads=1, corun=(1.0, 1.2))
    assert host.stretch(1) == 1.0 and host.stretch(2) == 1.2
    assert host.stretch(3) == pytest.approx(1.2 * 1.5)
    assert host.stretch(100) == pytest.approx(1.2 * 50)
    bare = HostModel(cores=4, threads=2)
    assert [bare.stretch(k) for k in (1, 2, 3, 4)] == [1.0, 1.0, 1.5, 2.0]


def test_a_step_next_to_the_other_kind_takes_the_measured_cross_factor():
    host = HostModel(cores=2, threads=1, corun=(1.0, 1.1, 1.4), cross=(1.7, 1.3))
    assert host.mixed_stretch(2, prefill_step=False, other=0) == host.stretch(2) == 1.1
    assert host.mixed_stretch(2, prefill_step=False, other=1) == pytest.approx(1.7)  # decode next to a prefill
    assert host.mixed_stretch(2, prefill_step=True, other=1) == pytest.approx(1.3)  # prefill next to a decode
    assert host.mixed_stretch(3, prefill_step=False, other=1) == pytest.approx(1.4 * (1 + (1.7 / 1.1 - 1) / 2))
    assert host.mixed_stretch(1, prefill_step=True, other=0) == 1.0
    assert HostModel(cores=2, corun=(1.0, 1.1)).mixed_stretch(2, False, 1) == 1.1  # not measured: same-kind stretch
    with pytest.raises(ValueError):
        HostModel(cores=2, corun=(1.0, 1.1), cross=(1.5,))


def test_host_model_validates_and_reads_the_profile():
    with pytest.raises(ValueError):
        HostModel(cores=0)
    with pytest.raises(ValueError):
        HostModel(cores=2, corun=(1.0, -1.0))
    with pytest.raises(ValueError):
        ClusterConfig(host_cores=-1)
    profile = dataclasses.replace(make_profile(), host={"corun": {"cores": 2, "threads": 1, "stretch": [1.0, 1.3]}})
    assert HostModel.from_profile(profile, 2).corun == (1.0, 1.3)
    assert HostModel.from_profile(profile, 2).cross == ()
    crossed = dataclasses.replace(profile, host={"corun": {**profile.host["corun"], "cross": {"decode": 1.6, "prefill": 1.2}}})
    assert HostModel.from_profile(crossed, 2).cross == (1.6, 1.2)
    assert HostModel.from_profile(profile, 8).corun == ()  # measured on another core count: not used
    assert Profile.from_dict(profile.to_dict()).host == profile.host
    assert assign_hosts(5, 2) == [0, 0, 1, 1, 2] and assign_hosts(3, 0) == [0, 0, 0]


def _run(profile, **host):
    requests = [SimRequest(i, 200, 20, 0.0) for i in range(8)]
    return simulate(requests, ClusterConfig(prefill=0, decode=0, mixed=2, **host), {"mixed": profile})


def test_a_shared_host_stretches_busy_steps_and_own_cores_do_not():
    profile = dataclasses.replace(make_profile(), host={"corun": {"cores": 2, "threads": 1, "stretch": [1.0, 1.5]}})
    own = _run(profile)
    one_each = _run(profile, host_cores=2, nodes_per_host=1)  # a host per node: nothing shared
    shared = _run(profile, host_cores=2)
    assert one_each["median_tpot_ms"] == pytest.approx(own["median_tpot_ms"])
    assert one_each["median_ttft_ms"] == pytest.approx(own["median_ttft_ms"])
    assert shared["median_tpot_ms"] == pytest.approx(1.5 * own["median_tpot_ms"], rel=0.02)
    assert shared["completed"] == own["completed"] == 8


def _disaggregated(profile):
    requests = [SimRequest(i, 400, 10, 0.2 * i) for i in range(10)]  # a burst: decodes overlap later prefills
    return simulate(requests, ClusterConfig(prefill=1, decode=1, host_cores=2), {"prefill": profile, "decode": profile})


def test_decode_steps_next_to_prefills_stretch_by_the_cross_factor():
    corun = {"cores": 2, "threads": 1, "stretch": [1.0, 1.05]}
    same = _disaggregated(dataclasses.replace(make_profile(), host={"corun": corun}))
    crossed = _disaggregated(dataclasses.replace(make_profile(), host={"corun": {**corun,
                                                                                "cross": {"decode": 2.0, "prefill": 1.05}}}))
    assert crossed["completed"] == same["completed"] == 10
    # prefills: cross == stretch(2) (only the decode node's longer busy spells move them)
    assert crossed["median_ttft_ms"] == pytest.approx(same["median_ttft_ms"], rel=0.02)
    assert crossed["median_tpot_ms"] > 1.4 * same["median_tpot_ms"]  # the decodes ran beside prefills


def test_a_step_is_re_timed_when_a_peer_wakes_mid_step():
    """A 1.11 s prefill starts alone; 0.3 s in, the other node starts a long decode beside it: the
    rest of the prefill (0.81 s of profiled work) runs at stretch(2) = 2, so it ends 0.81 s later."""
    profile = dataclasses.replace(make_profile(), host={"corun": {"cores": 2, "threads": 1, "stretch": [1.0, 2.0]}})
    requests = [SimRequest(0, 1000, 1, 0.0), SimRequest(1, 10, 200, 0.3)]
    runs = [simulate(requests, ClusterConfig(prefill=0, decode=0, mixed=2, policy="round_robin", **host),
                     {"mixed": profile}) for host in ({}, {"host_cores": 2})]
    own, shared = ({r["request_id"]: r["ttft_ms"] for r in run["requests"]} for run in runs)
    left_ms = 1e3 * profile.step.prefill_s(1000) - 300  # profiled work left when the decode starts
    assert shared[0] - own[0] == pytest.approx(left_ms, rel=0.02)


def test_corun_ratios_are_taken_within_a_round_then_the_median_over_rounds():
    from splitserve.sim.measure_corun import CorunConfig, _summary

    def round_(alone, pair, decode_next_to_prefill):  # one kind-neutral round: prefill steps 10x decode's
        return ({"decode": [alone, pair], "prefill": [10 * alone, 10 * pair]},
                {"decode": decode_next_to_prefill, "prefill": 10 * pair})

    rounds = [round_(1.0, 1.2, 1.6), round_(2.0, 2.4, 3.2), round_(1.0, 1.5, 1.8)]  # round 2: a loaded machine
    summary = _summary(rounds, CorunConfig("m", max_procs=2))
    assert summary["stretch"] == [1.0, 1.2] and summary["cross"] == {"decode": 1.6, "prefill": 1.2}
    assert summary["rounds"] == 3 and summary["median_step_ms"]["decode"] == [1000.0, 1200.0]


@pytest.mark.slow
def test_corun_measures_one_stretch_per_process_count(tiny_model):
    from splitserve.sim.measure_corun import CorunConfig, measure_corun

    corun = measure_corun(CorunConfig(str(tiny_model), threads=1, max_procs=2, seconds=0.2, rounds=2), log=lambda _: None)
    assert corun["stretch"][0] == 1.0 and len(corun["stretch"]) == 2 and corun["stretch"][1] > 0
    assert corun["threads"] == 1 and corun["cores"] >= 1
    assert all(len(v) == 2 for v in corun["median_step_ms"].values())
    assert set(corun["cross"]) == {"decode", "prefill"} and min(corun["cross"].values()) > 0
    assert corun["rounds"] == 2 == len(corun["round_step_ms"])
    with pytest.raises(ValueError):
        CorunConfig(str(tiny_model), max_procs=0)
