"""Diagnostic for the simulator validation: how much of each error is the machine's speed on the
day (the profile's step times against the run's) and how much the model's structure.

    python benchmarks/simulator_calibrated.py   # reads benchmarks/results/simulator_validation*

For each measured run: k = measured median inter-token latency / simulated median ITL (the same
decode steps, as fast as the node ran them during that run against as fast as the profile saw
them). The profile's step model is scaled by k (every coefficient: one machine-speed factor,
fitted on the run itself, so this is not a validation) and the run is simulated again. Errors
that remain are the model's structure (queueing, contention between processes, jitter); the
ones that go away were the profile's snapshot of a shared machine.
Writes benchmarks/results/simulator_calibrated.json.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METRICS = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms")


def main() -> None:
    from simulator_validation import SETUPS, compare, predict, scaled
    from splitserve.sim.profile import load_profile

    report = json.loads((RESULTS / "simulator_validation.json").read_text())
    profile = load_profile(report["config"]["profile"])
    rows = []
    for path in sorted((RESULTS / "simulator_validation").glob("*_measured.json")):
        measured = json.loads(path.read_text())
        setup = "1P+1D" if path.name.startswith("1P1D") else "2 colocated"
        assert setup in SETUPS
        sim = json.loads(path.with_name(path.name.replace("_measured", "_sim")).read_text())
        k = measured["median_itl_ms"] / sim["median_itl_ms"]
        row = compare(setup, measured, predict(measured, setup, scaled(profile, k)))
        row["speed_factor"] = round(k, 3)
        rows.append(row)
        print(setup, measured["workload"], measured["request_rate"], f"k={k:.2f}",
              {m: f"{row[m]['error']:+.0%}" for m in METRICS})
    out = {"benchmark": "simulator_calibrated", "method": __doc__.split("\n\n", 2)[1].strip(),
           "profile": report["config"]["profile"], "rows": rows}
    (RESULTS / "simulator_calibrated.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
