"""Diagnostic for the simulator validation: how much of each error is the machine's speed on the
day (the profile's step times against the run's) and how much the model's structure.

    python benchmarks/simulator_calibrated.py   # reads benchmarks/results/simulator_validation*

For each measured run: k = measured median inter-token latency / simulated median ITL times the
run's probe factor (the same decode steps, as fast as the node ran them during that run against
as fast as the validation's prediction had them). The session profile's step model is scaled by
k (every coefficient: one machine-speed factor, fitted on the run itself, so this is not a
validation; the validation's own factor comes from a probe before the run) and the run is
simulated again. Errors that remain are the model's structure (queueing, contention between
processes, jitter); the ones that go away were the machine's speed during the run.
Writes benchmarks/results/simulator_calibrated.json.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METRICS = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms")


def main() -> None:
    import os

    from simulator_validation import SETUPS, compare, predict, slug
    from splitserve.sim.profile import load_profile

    rows = []
    for setup in SETUPS:
        name = f"profile_small_cpu_validation_{slug(setup)}.json"  # the validation session's profile
        profile = load_profile(RESULTS / name)
        for path in sorted((RESULTS / "simulator_validation").glob(f"{slug(setup)}_*_measured.json")):
            measured = json.loads(path.read_text())
            sim = json.loads(path.with_name(path.name.replace("_measured", "_sim")).read_text())
            k = measured["median_itl_ms"] / sim["median_itl_ms"] * measured["speed_factor"]
            refit = {**measured, "speed_factor": k}
            row = compare(setup, refit, predict(refit, setup, profile, host_cores=len(os.sched_getaffinity(0))),
                          predict(refit, setup, profile, host_cores=0))
            row["speed_factor"] = round(k, 3)
            row["probe_speed_factor"] = round(measured["speed_factor"], 3)
            rows.append(row)
            print(setup, measured["workload"], measured["request_rate"], f"k={k:.2f}",
                  {m: f"{row[m]['error']:+.0%}" for m in METRICS})
    out = {"benchmark": "simulator_calibrated", "method": __doc__.split("\n\n", 2)[1].strip(),
           "profiles": [f"profile_small_cpu_validation_{slug(s)}.json" for s in SETUPS], "rows": rows}
    (RESULTS / "simulator_calibrated.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
