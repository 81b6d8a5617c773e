"""Which setup is faster, across repeated validation runs: is the measured ranking itself stable?

    python benchmarks/simulator_ranking.py RUN.json RUN.json [...] [--out results/simulator_ranking.json]

Each RUN.json is a `benchmarks/simulator_validation.py` result measured with the same command
(same requests, same arrival times, same setups). For every (workload, rate) and median TTFT /
TPOT: the faster setup measured in each run and the gap between the setups, and whether the
runs agree (the ranking is *decided* by measurement) or not (the gap is inside the repeat noise:
no prediction can match every run there). Each run's predictions are scored on the decided
cells and on all cells. Nothing is measured here; the runs' rows are only read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simulator_validation import PREDICTIONS, summary

from splitserve.bench.provenance import portable

RESULTS = Path(__file__).parent / "results"
RANKED = ("median_ttft_ms", "median_tpot_ms")


def cell_key(cell: dict) -> tuple[str, float]:
    return cell["workload"], cell["rate"]


def measured_gap(rows: list[dict], workload: str, rate: float, key: str) -> float:
    """(slower - faster) / faster of the two setups' measured values in one run."""
    values = sorted(r[key]["measured"] for r in rows if (r["workload"], r["rate"]) == (workload, rate))
    return (values[-1] - values[0]) / values[0]


def ranking_cells(runs: list[dict]) -> list[dict]:
    """Per (workload, rate, metric): each run's measured faster setup and gap, each run's predicted
    faster setups, and whether the runs agree on the measured one."""
    rankings = [{cell_key(c): c for c in summary(run["rows"])["ranking"]} for run in runs]
    cells = []
    for workload, rate in sorted(set.intersection(*(set(r) for r in rankings))):
        for key in RANKED:
            measured = [r[(workload, rate)][f"{key}_measured_faster"] for r in rankings]
            cell = {"workload": workload, "rate": rate, "metric": key, "measured_faster": measured,
                    "measured_gap": [round(measured_gap(run["rows"], workload, rate, key), 4) for run in runs],
                    "decided": len(set(measured)) == 1}
            for model, _, _ in PREDICTIONS:
                name = f"{key}_{model}_faster"
                if all(name in r[(workload, rate)] for r in rankings):
                    cell[f"{model}_faster"] = [r[(workload, rate)][name] for r in rankings]
            cells.append(cell)
    return cells


def scores(cells: list[dict], num_runs: int) -> dict:
    """Per prediction and run: matches of the run's measured ranking, on decided cells and on all."""
    out = {}
    for model, _, _ in PREDICTIONS:
        have = [c for c in cells if f"{model}_faster" in c]
        if not have:
            continue
        decided = [c for c in have if c["decided"]]
        out[model] = [{"decided_matched": sum(c[f"{model}_faster"][i] == c["measured_faster"][i] for c in decided),
                       "decided_cells": len(decided),
                       "all_matched": sum(c[f"{model}_faster"][i] == c["measured_faster"][i] for c in have),
                       "all_cells": len(have)} for i in range(num_runs)]
    return out


def report(paths: list[Path]) -> dict:
    runs = [json.loads(p.read_text()) for p in paths]
    cells = ranking_cells(runs)
    return {"benchmark": "simulator_ranking", "runs": [portable(p.resolve()) for p in paths],
            "cells": cells, "decided": sum(c["decided"] for c in cells), "scores": scores(cells, len(runs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="simulator_validation.py results of the same command")
    parser.add_argument("--out", type=Path, default=RESULTS / "simulator_ranking.json")
    args = parser.parse_args()
    if len(args.runs) < 2:
        parser.error("give at least two runs: one run cannot tell a ranking from noise")
    result = report(args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for c in result["cells"]:
        print(f"{c['workload']:>10} @{c['rate']:<4} {c['metric']:<15} measured {c['measured_faster']} "
              f"gaps {c['measured_gap']} {'decided' if c['decided'] else 'NOT decided'}; "
              f"shared host {c.get('shared_host_faster')}")
    print(json.dumps(result["scores"]))


if __name__ == "__main__":
    main()
