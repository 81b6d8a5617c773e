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


def test_host_model_validates_and_reads_the_profile():
    with pytest.raises(ValueError):
        HostModel(cores=0)
    with pytest.raises(ValueError):
        HostModel(cores=2, corun=(1.0, -1.0))
    with pytest.raises(ValueError):
        ClusterConfig(host_cores=-1)
    profile = dataclasses.replace(make_profile(), host={"corun": {"cores": 2, "threads": 1, "stretch": [1.0, 1.3]}})
    assert HostModel.from_profile(profile, 2).corun == (1.0, 1.3)
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


@pytest.mark.slow
def test_corun_measures_one_stretch_per_process_count(tiny_model):
    from splitserve.sim.measure_corun import CorunConfig, measure_corun

    corun = measure_corun(CorunConfig(str(tiny_model), threads=1, max_procs=2, seconds=0.2), log=lambda _: None)
    assert corun["stretch"][0] == 1.0 and len(corun["stretch"]) == 2 and corun["stretch"][1] > 0
    assert corun["threads"] == 1 and corun["cores"] >= 1
    assert all(len(v) == 2 for v in corun["median_step_ms"].values())
    with pytest.raises(ValueError):
        CorunConfig(str(tiny_model), max_procs=0)
