"""simulate's output reads as a bench result; plan finds the smallest pool meeting the SLOs."""

from __future__ import annotations

import json
from dataclasses import replace

from splitserve.bench.report import compare, format_table, save_json
from splitserve.sim.cluster import ClusterConfig
from splitserve.sim.planner import NodeKind, PlanConfig, Planner, helm_values
from splitserve.sim.request import SimRequest
from splitserve.sim.runner import simulate
from tests.unit.sim_support import all_roles, linear_profile


def workload(n: int = 120, gap_s: float = 0.05) -> list[SimRequest]:
    return [SimRequest(i, 200 + 37 * (i % 9), 20 + (i % 5), i * gap_s) for i in range(n)]


def test_simulated_results_have_the_bench_shape(tmp_path):
    result = simulate(workload(), ClusterConfig(1, 2, 0), all_roles(linear_profile()),
                      {"workload": "test", "request_rate": 20}, (50.0, 99.0), {"ttft": 1000, "tpot": 100})
    assert result["completed"] == 120 and result["failed"] == 0
    assert 0 < result["median_ttft_ms"] <= result["p99_ttft_ms"]
    assert result["request_goodput"] <= result["request_throughput"]
    assert {r["role"] for r in result["sim"]["nodes"]} == {"prefill", "decode"}
    a, b = save_json(result, tmp_path / "a.json"), tmp_path / "b.json"
    b.write_text(json.dumps({**result, "median_ttft_ms": result["median_ttft_ms"] * 2}))
    assert "+100.0%" in compare(a, b)
    assert "Median TTFT" in format_table(result)


def test_plan_picks_the_smallest_pool_that_meets_the_slos():
    kinds = [NodeKind("cpu", linear_profile(), 1.0)]
    config = PlanConfig({"ttft": 1500, "tpot": 60}, attainment=0.95, policies=("least_loaded",), max_nodes=16)
    planner = Planner(workload(), kinds, config)
    best = planner.search()
    assert best is not None and best.meets(0.95)
    cheaper = [c for c in planner.seen.values() if c.cost < best.cost]
    assert cheaper and not any(c.meets(0.95) for c in cheaper)
    frontier = planner.frontier()
    assert [c.cost for c in frontier] == sorted(c.cost for c in frontier)
    values = helm_values(best, 256)
    assert "routing:\n  policy: least_loaded" in values and "replicas:" in values
    assert "kvCacheDtype" not in helm_values(best, 256, planner.kinds)  # profiled with the model's KV dtype
    half = [replace(k, profile=replace(k.profile, meta={**k.profile.meta, "dtype": "float32",
                                                         "kv_cache_dtype": "float16"})) for k in planner.kinds]
    assert "model:\n  kvCacheDtype: float16" in helm_values(best, 256, half)
