"""Simulator vs the real cluster on this machine: predicted and measured median and p99 TTFT
and TPOT, for two workloads at two rates each, on 1 prefill + 1 decode and on 2 colocated.

    python benchmarks/simulator_validation.py [--profile P.json] [--num-requests 30]

1. Profile the `small` model (`splitserve profile`, 1 torch thread, the nodes' default flags)
   unless --profile is given.
2. Per setup, start a real local cluster (router + nodes, 1 thread each) and run
   `splitserve bench` (gRPC) per workload and rate; the per-request send times and lengths of
   each measured run are replayed in `splitserve simulate` with the same setup.
3. Errors are (predicted - measured) / measured. The machine is shared: the load average is
   recorded before and after, and every number carries it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETUPS = {"1P+1D": dict(prefill=1, decode=1, colocated=0), "2 colocated": dict(prefill=0, decode=0, colocated=2)}
METRICS = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms")


def bench_config(url: str, model: Path, workload: str, rate: float, args, seed: int = 0):
    from splitserve.bench.arrivals import ArrivalConfig
    from splitserve.bench.benchmark import BenchConfig
    from splitserve.bench.workloads import WorkloadConfig

    return BenchConfig(url=url, workload=WorkloadConfig(name=workload, seed=seed, max_input_len=args.max_input_len,
                                                        max_output_len=args.max_output_len),
                       arrival=ArrivalConfig(kind="poisson", rate=rate, seed=seed), num_requests=args.num_requests,
                       tokenizer=str(model), percentiles=(50.0, 99.0), label=f"{workload}@{rate}")


def started_cluster(cluster_class, model: Path, setup: str, tries: int = 3):
    """A started cluster; a node slow to start on a loaded machine (120 s limit) is tried again."""
    for attempt in range(tries):
        cluster = cluster_class(model, threads=1, transport="torch", **SETUPS[setup])
        try:
            cluster.start()
            return cluster
        except RuntimeError as e:
            print(f"{setup}: start {attempt + 1} failed ({str(e).splitlines()[0]})", flush=True)
    raise RuntimeError(f"{setup}: the cluster did not start in {tries} tries")


def measure_setup(model: Path, setup: str, args) -> list[dict]:
    from splitserve.bench import report
    from splitserve.bench.benchmark import run_benchmark
    from splitserve.bench.workloads import WorkloadConfig
    from splitserve.localcluster.cluster import LocalCluster

    runs = []
    cluster = started_cluster(LocalCluster, model, setup)
    try:
        warm = bench_config(cluster.url, model, "fixed", 2.0, args)
        run_benchmark(dataclasses.replace(warm, workload=WorkloadConfig(name="fixed", input_len=64, output_len=4),
                                          num_requests=2))
        for i, (workload, rate) in enumerate((w, r) for w in args.workloads for r in args.rates):
            # a seed per run: no run finds the previous run's prompts in the prefix cache
            load = os.getloadavg()[0]
            config = bench_config(cluster.url, model, workload, rate, args, args.seed + 100 * i)
            result = report.result_dict(run_benchmark(config))
            result["loadavg_1m"] = [load, os.getloadavg()[0]]
            runs.append(result)
            print(f"{setup} {workload}@{rate}: measured median TTFT {result['median_ttft_ms']:.0f} ms, "
                  f"TPOT {result['median_tpot_ms']:.0f} ms (load {load:.1f})", flush=True)
    finally:
        cluster.stop()
    return runs


def predict(measured: dict, setup: str, profile) -> dict:
    from splitserve.sim.cluster import ClusterConfig
    from splitserve.sim.runner import simulate
    from splitserve.sim.workload import from_bench_run

    counts = SETUPS[setup]
    config = ClusterConfig(prefill=counts["prefill"], decode=counts["decode"], mixed=counts["colocated"])
    profiles = {"prefill": profile, "decode": profile, "mixed": profile}
    return simulate(from_bench_run(measured), config, profiles, {"label": measured["label"]}, (50.0, 99.0))


def compare(setup: str, measured: dict, predicted: dict) -> dict:
    row = {"setup": setup, "workload": measured["workload"], "rate": measured["request_rate"],
           "completed": [measured["completed"], predicted["completed"]], "loadavg_1m": measured["loadavg_1m"]}
    for key in METRICS:
        m, p = measured[key], predicted[key]
        row[key] = {"measured": m, "predicted": p, "error": (p - m) / m if m else None}
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, key in zip(axes, METRICS):
        for setup, marker in zip(SETUPS, "os"):
            pts = [r[key] for r in rows if r["setup"] == setup]
            ax.scatter([p["measured"] for p in pts], [p["predicted"] for p in pts], marker=marker, label=setup)
        values = [v for r in rows for v in (r[key]["measured"], r[key]["predicted"])]
        lo, hi = min(values) * 0.8, max(values) * 1.2
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="measured ms", ylabel="predicted ms", title=key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--profile", type=Path, help="existing profile (default: measure one first)")
    parser.add_argument("--workloads", nargs="+", default=["sharegpt", "azure-code"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.5])
    parser.add_argument("--num-requests", type=int, default=30)
    parser.add_argument("--max-input-len", type=int, default=512)
    parser.add_argument("--max-output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "simulator_validation.json")
    args = parser.parse_args()
    from splitserve.modelgen.cache import ensure_model
    from splitserve.sim.profile import load_profile
    from splitserve.sim.profiler import ProfileConfig, run_profile

    model = args.model or ensure_model("small")
    load_start = os.getloadavg()
    if args.profile:
        profile = load_profile(args.profile)
    else:
        profile = run_profile(ProfileConfig(str(model), threads=1))
        profile.save(RESULTS / "profile_small_cpu.json")
    started = time.time()
    rows, measured_runs = [], {}
    runs_dir = args.out.with_suffix("")  # per run: measured and simulated bench JSON (`splitserve bench compare`)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for setup in SETUPS:
        for measured in measure_setup(model, setup, args):
            predicted = predict(measured, setup, profile)
            rows.append(compare(setup, measured, predicted))
            name = f"{setup.replace(' ', '_').replace('+', '')}_{measured['workload']}_{measured['request_rate']}"
            (runs_dir / f"{name}_measured.json").write_text(json.dumps(measured, indent=1))
            (runs_dir / f"{name}_sim.json").write_text(json.dumps(predicted, indent=1))
            measured_runs[f"{setup} {measured['label']}"] = {k: v for k, v in measured.items() if k != "requests"}
        report = {"benchmark": "simulator_validation", "model": model.name,
                  "config": {k: str(v) for k, v in vars(args).items()}, "method": __doc__.split("\n\n", 2)[2].strip(),
                  "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "profile_meta": profile.meta,
                  "wall_s": round(time.time() - started, 1), "rows": rows, "measured": measured_runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")  # after each setup: a cut-off run keeps what it has
    plot(rows, args.out.with_suffix(".png"))
    for r in rows:
        print(r["setup"], r["workload"], r["rate"], {k: f"{r[k]['error']:+.0%}" for k in METRICS if r[k]["error"] is not None})


if __name__ == "__main__":
    main()
