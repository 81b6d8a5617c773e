"""The simulator's fast paths give what its slow paths give."""

from __future__ import annotations

import numpy as np
import pytest

import splitserve.sim.workload as sim_workload
from splitserve.bench.arrivals import ArrivalConfig
from splitserve.bench.workloads import WorkloadConfig
from splitserve.sim.fast_lengths import row_indices


def scalar_rows(seed: int, num_rows: int, n: int) -> list[int]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append(int(rng.integers(num_rows)))
        rng.integers(1 << 20)
    return out


@pytest.mark.parametrize("num_rows", [1, 7, 19366, 3_000_000_000])  # the last rejects ~30% of draws
def test_row_draws_equal_the_generator_draw_for_draw(num_rows):
    assert row_indices(5, num_rows, 3000).tolist() == scalar_rows(5, num_rows, 3000)


def requests(monkeypatch, fast: bool, **workload) -> list[tuple]:
    real, used = sim_workload.sampled_lengths, []
    fake = (lambda *a: used.append(real(*a)) or used[-1]) if fast else (lambda *a: None)
    monkeypatch.setattr(sim_workload, "sampled_lengths", fake)
    spec = sim_workload.SimWorkload(WorkloadConfig(**workload), ArrivalConfig(kind="poisson", rate=5.0), 2000)
    made = sim_workload.make_requests(spec)
    assert all(x is not None for x in used) and len(used) == fast
    return [(r.rid, r.prompt_tokens, r.target, r.arrival_s, r.cached_tokens, r.hash_ids) for r in made]


@pytest.mark.parametrize("workload", [dict(name="azure-conv"), dict(name="sharegpt", seed=3),
                                      dict(name="azure-code", max_input_len=512, max_output_len=48)])
def test_fast_requests_equal_the_bench_workload(monkeypatch, workload):
    fast = requests(monkeypatch, True, **workload)
    assert fast == requests(monkeypatch, False, **workload)
