"""benchmarks/simulator_ranking.py: a measured ranking that flips between repeated runs is not
decided, and predictions are scored against each run's own measured ranking."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # simulator_ranking imports simulator_validation by name
    spec.loader.exec_module(module)
    return module


_load("simulator_validation")
ranking = _load("simulator_ranking")


def _row(setup: str, workload: str, ttft: float, ttft_predicted: float, tpot: float, tpot_predicted: float) -> dict:
    row = {"setup": setup, "workload": workload, "rate": 0.5}
    for key in ("p99_ttft_ms", "p99_tpot_ms"):
        row[key] = {"measured": 1.0, "predicted": 1.0, "error": 0.0}
    row["median_ttft_ms"] = {"measured": ttft, "predicted": ttft_predicted, "error": ttft_predicted / ttft - 1}
    row["median_tpot_ms"] = {"measured": tpot, "predicted": tpot_predicted, "error": tpot_predicted / tpot - 1}
    return row


def _run(colocated_tpot: float) -> dict:
    """1P+1D is faster by TTFT in every run (600 vs 700 ms, predicted so); TPOT: 1P+1D measures 20 ms,
    2 colocated `colocated_tpot`, and 2 colocated is predicted faster (19 vs 21 ms)."""
    return {"rows": [_row("1P+1D", "sharegpt", 600.0, 610.0, 20.0, 21.0),
                     _row("2 colocated", "sharegpt", 700.0, 690.0, colocated_tpot, 19.0)]}


def test_a_ranking_that_flips_between_runs_is_not_decided_and_scores_only_on_decided_cells(tmp_path):
    paths = []
    for i, tpot in enumerate((19.0, 21.0)):  # TPOT: colocated faster in the first run, slower in the second
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(__import__("json").dumps(_run(tpot)))
    result = ranking.report(paths)
    by_metric = {c["metric"]: c for c in result["cells"]}
    assert by_metric["median_ttft_ms"]["decided"] and by_metric["median_ttft_ms"]["measured_faster"] == ["1P+1D"] * 2
    assert not by_metric["median_tpot_ms"]["decided"]
    assert by_metric["median_tpot_ms"]["measured_faster"] == ["2 colocated", "1P+1D"]
    assert by_metric["median_ttft_ms"]["measured_gap"] == [round(100 / 600, 4)] * 2
    assert result["decided"] == 1
    first, second = result["scores"]["shared_host"]
    assert first == {"decided_matched": 1, "decided_cells": 1, "all_matched": 2, "all_cells": 2}
    assert second == {"decided_matched": 1, "decided_cells": 1, "all_matched": 1, "all_cells": 2}
