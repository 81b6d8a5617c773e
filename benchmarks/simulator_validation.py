"""Simulator vs the real cluster on this machine: predicted and measured median and p99 TTFT
and TPOT, for two workloads at two rates each, on 1 prefill + 1 decode and on 2 colocated.

    python benchmarks/simulator_validation.py [--setups 1P+1D] [--num-requests 30] [--merge]

Per setup (one call per setup fits one timing-lock session; --merge keeps the other setup's rows):
1. Profile the `small` model in the same sitting (`splitserve profile --corun 3`: 1 torch thread,
   the nodes' default flags, plus the steps' stretch with 1..3 engine processes at once),
   unless --profile is given. On the started cluster, 5 short requests 1 s apart (idle) give
   the hop cost: the `hop_s` that makes the simulated idle TTFT the measured one.
2. Start a real local cluster (router + nodes, 1 thread each); before and after each workload
   and rate, a speed probe (in this process while the cluster idles: prompts of 256, 384 and 512
   tokens; decode steps at batch 1 and 4, contexts 64 and 512) gives the machine's speed per
   step kind against the profile (median of probe / profile step time, shape by shape); the run's
   speed is the geometric mean of its two probes, and the step model's prefill steps (any with
   prompt tokens) and decode-only steps are scaled by theirs. Between the runs
   `splitserve bench` (gRPC); its per-request send times and lengths are replayed in the simulator.
3. Predictions: `shared host` (host_cores = this machine's cores, all nodes on it: host.py) and
   `own cores` (the fleet default), both with the probe's speed. Errors are (predicted -
   measured) / measured; the load average is recorded before and after every run.
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


def speed_factors(engine, profile) -> dict:
    """Measured / profiled step time per kind, median over the probe's steps: prefill (prompts of
    256, 384 and 512 tokens, twice) and decode (batch 1 and 4 at contexts 64 and 512, 10 steps
    each), each against the profile's own measurement of that shape (the fit where it has none:
    against the fit, the decode ratio carried its error at the probe's shapes, up to 28%)."""
    import statistics

    from splitserve.sim.measure import MeasurePlan, decode_points, prefill_points

    plan = MeasurePlan((256, 384, 512), (1, 4), (64, 512), 2, profile.engine.max_num_batched_tokens, 4096)
    measured = profiled_seconds(profile)
    step = profile.step

    def ratio(p):
        key = shape_key(p.kind, p.num_tokens, p.num_seqs, p.attention, p.decode_context)
        return p.seconds / measured.get(key, step.seconds(p.num_tokens, p.num_seqs, p.attention, p.decode_context,
                                                          p.masked_attention))

    return {"prefill": statistics.median(map(ratio, prefill_points(engine, plan))),
            "decode": statistics.median(map(ratio, decode_points(engine, plan)))}


def shape_key(kind: str, num_tokens: int, num_seqs: int, attention: float, decode_context: float) -> tuple:
    return kind, int(num_tokens), int(num_seqs), float(attention), float(decode_context)


def profiled_seconds(profile) -> dict:
    """The profile's raw step points: shape -> median measured seconds."""
    import statistics

    by_shape: dict[tuple, list[float]] = {}
    for p in profile.points.get("steps", []):
        key = shape_key(p["kind"], p["num_tokens"], p["num_seqs"], p["attention"], p.get("decode_context", 0.0))
        by_shape.setdefault(key, []).append(p["seconds"])
    return {k: statistics.median(v) for k, v in by_shape.items()}


def run_speed(before: dict, after: dict) -> dict:
    """A run's speed per kind: the geometric mean of the probes before and after it (the machine drifts)."""
    return {k: (before[k] * after[k]) ** 0.5 for k in before} | {"before": before, "after": after}


def measure_setup(model: Path, setup: str, args, probe) -> tuple[list[dict], dict]:
    """The measured runs, and an idle run (5 short requests 1 s apart) that calibrates the hop cost."""
    from splitserve.bench import report
    from splitserve.bench.arrivals import ArrivalConfig
    from splitserve.bench.benchmark import run_benchmark
    from splitserve.bench.workloads import WorkloadConfig
    from splitserve.localcluster.cluster import LocalCluster

    runs = []
    cluster = started_cluster(LocalCluster, model, setup)
    try:
        warm = bench_config(cluster.url, model, "fixed", 2.0, args)
        run_benchmark(dataclasses.replace(warm, workload=WorkloadConfig(name="fixed", input_len=64, output_len=4),
                                          num_requests=2))
        factor = run_speed(probe(), probe())
        idle = bench_config(cluster.url, model, "fixed", 1.0, args, seed=12345)
        idle = report.result_dict(run_benchmark(dataclasses.replace(
            idle, workload=WorkloadConfig(name="fixed", input_len=64, output_len=4, seed=12345), num_requests=5,
            arrival=ArrivalConfig(kind="constant", rate=1.0))))
        idle["speed_factor"] = factor
        for i, (workload, rate) in enumerate((w, r) for w in args.workloads for r in args.rates):
            # a seed per run: no run finds the previous run's prompts in the prefix cache
            before = probe()
            load = os.getloadavg()[0]
            config = bench_config(cluster.url, model, workload, rate, args, args.seed + 100 * i)
            result = report.result_dict(run_benchmark(config))
            result["loadavg_1m"] = [load, os.getloadavg()[0]]
            result["speed_factor"] = factor = run_speed(before, probe())
            runs.append(result)
            print(f"{setup} {workload}@{rate}: measured median TTFT {result['median_ttft_ms']:.0f} ms, "
                  f"TPOT {result['median_tpot_ms']:.0f} ms (load {load:.1f}, speed prefill x{factor['prefill']:.2f} "
                  f"decode x{factor['decode']:.2f})", flush=True)
    finally:
        cluster.stop()
    return runs, idle


def calibrate_hop_s(idle: dict, setup: str, profile) -> float:
    """The hop cost that makes the simulated idle TTFT the measured one (TTFT is linear in it on
    an idle cluster): what the router, gRPC and the client add beyond the engine's steps."""
    t0 = predict(idle, setup, profile, 0, hop_s=0.0)["median_ttft_ms"]
    t1 = predict(idle, setup, profile, 0, hop_s=0.001)["median_ttft_ms"]
    return max(0.0, 0.001 * (idle["median_ttft_ms"] - t0) / (t1 - t0))


@dataclasses.dataclass(frozen=True)
class ScaledSteps:
    """A step model whose steps with prompt tokens take `prefill` times, and decode-only steps
    `decode` times, the profiled time (the run's measured speed of each kind)."""

    base: object
    prefill: float
    decode: float

    def seconds(self, num_tokens, num_seqs, attention, decode_context=0.0, masked_attention=0.0) -> float:
        factor = self.prefill if attention else self.decode
        return factor * self.base.seconds(num_tokens, num_seqs, attention, decode_context, masked_attention)

    @property
    def min_step_s(self) -> float:
        return self.decode * self.base.min_step_s

    def prefill_s(self, num_tokens: int, start: int = 0) -> float:
        return self.prefill * self.base.prefill_s(num_tokens, start)

    def decode_s(self, batch: int, context: int) -> float:
        return self.decode * self.base.decode_s(batch, context)


def scaled(profile, speed):
    """The profile at a run's speed: {"prefill", "decode"} factors (older runs: one number for both)."""
    speed = speed if isinstance(speed, dict) else {"prefill": speed, "decode": speed}
    return dataclasses.replace(profile, step=ScaledSteps(profile.step, speed["prefill"], speed["decode"]))


def predict(measured: dict, setup: str, profile, host_cores: int, hop_s: float | None = None) -> dict:
    from splitserve.sim.cluster import ClusterConfig
    from splitserve.sim.runner import simulate
    from splitserve.sim.workload import from_bench_run

    counts = SETUPS[setup]
    config = ClusterConfig(prefill=counts["prefill"], decode=counts["decode"], mixed=counts["colocated"],
                           host_cores=host_cores, hop_s=measured["hop_s"] if hop_s is None else hop_s,
                           step_jitter=bool(profile.points.get("decode_step_ratios")))  # the profile's spread
    profile = scaled(profile, measured["speed_factor"])
    profiles = {"prefill": profile, "decode": profile, "mixed": profile}
    return simulate(from_bench_run(measured), config, profiles, {"label": measured["label"]}, (50.0, 99.0))


def compare(setup: str, measured: dict, predicted: dict, own_cores: dict) -> dict:
    row = {"setup": setup, "workload": measured["workload"], "rate": measured["request_rate"],
           "completed": [measured["completed"], predicted["completed"]], "loadavg_1m": measured["loadavg_1m"],
           "speed_factor": measured["speed_factor"]}
    for key in METRICS:
        m, p, o = measured[key], predicted[key], own_cores[key]
        row[key] = {"measured": m, "predicted": p, "error": (p - m) / m if m else None,
                    "own_cores": o, "own_cores_error": (o - m) / m if m else None}
    return row


def summary(rows: list[dict]) -> dict:
    """Cells within target (median 15%, p99 30%) for both models; each (workload, rate): does the
    faster setup by median TTFT / TPOT come out the same measured and predicted?"""
    out = {}
    for model, err in (("shared_host", "error"), ("own_cores", "own_cores_error")):
        within = {k: sum(abs(r[k][err]) <= (0.15 if k.startswith("median") else 0.30) for r in rows) for k in METRICS}
        within["cells"] = len(rows)
        out[model] = within
    ranking = []
    for workload, rate in sorted({(r["workload"], r["rate"]) for r in rows}):
        pair = {r["setup"]: r for r in rows if (r["workload"], r["rate"]) == (workload, rate)}
        if len(pair) < 2:
            continue
        cell = {"workload": workload, "rate": rate}
        for key in ("median_ttft_ms", "median_tpot_ms"):
            for model, value in (("measured", "measured"), ("shared_host", "predicted"), ("own_cores", "own_cores")):
                cell[f"{key}_{model}_faster"] = min(pair, key=lambda s: pair[s][key][value])
        ranking.append(cell)
    out["ranking"] = ranking
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, key in zip(axes, METRICS):
        for setup, marker in zip(SETUPS, "os"):
            pts = [r[key] for r in rows if r["setup"] == setup]
            dots = ax.scatter([p["measured"] for p in pts], [p["predicted"] for p in pts], marker=marker,
                              label=f"{setup} (shared host)")
            ax.scatter([p["measured"] for p in pts], [p["own_cores"] for p in pts], marker=marker, facecolors="none",
                       edgecolors=dots.get_facecolor(), label=f"{setup} (own cores)")
        values = [v for r in rows for v in (r[key]["measured"], r[key]["predicted"], r[key]["own_cores"])]
        lo, hi = min(values) * 0.8, max(values) * 1.2
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="measured ms", ylabel="predicted ms", title=key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slug(setup: str) -> str:
    return setup.replace(" ", "_").replace("+", "")


def setup_profile(model: Path, setup: str, args):
    from splitserve.sim.plots import plot_profile
    from splitserve.sim.profile import load_profile
    from splitserve.sim.profiler import ProfileConfig, run_profile

    if args.profile:
        return load_profile(args.profile)
    profile = run_profile(ProfileConfig(str(model), threads=1, corun=args.corun))
    path = profile.save(args.out.parent / f"profile_small_cpu_validation_{slug(setup)}.json")
    plot_profile(profile, path.with_suffix(".png"))
    return profile


def predicted_rows(setup: str, runs: list[dict], profile, runs_dir: Path) -> tuple[list[dict], dict]:
    """Predictions for the measured runs (hop_s and speed_factor in each); writes each run's JSON."""
    rows, measured_runs = [], {}
    for measured in runs:
        predicted = predict(measured, setup, profile, host_cores=len(os.sched_getaffinity(0)))
        own = predict(measured, setup, profile, host_cores=0)
        rows.append(compare(setup, measured, predicted, own))
        name = f"{slug(setup)}_{measured['workload']}_{measured['request_rate']}"
        (runs_dir / f"{name}_measured.json").write_text(json.dumps(measured, indent=1))
        (runs_dir / f"{name}_sim.json").write_text(json.dumps(predicted, indent=1))
        measured_runs[f"{setup} {measured['label']}"] = {k: v for k, v in measured.items() if k != "requests"}
    return rows, measured_runs


def repredict_setup(setup: str, args, runs_dir: Path) -> tuple[list[dict], dict]:
    """--predict-only: the setup's saved measured runs and session profile, predicted again."""
    from splitserve.sim.profile import load_profile

    profile = load_profile(args.out.parent / f"profile_small_cpu_validation_{slug(setup)}.json")
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob(f"{slug(setup)}_*_measured.json"))]
    if not runs:
        raise FileNotFoundError(f"no measured runs of {setup} in {runs_dir}")
    return predicted_rows(setup, runs, profile, runs_dir)


def run_setup(model: Path, setup: str, args, runs_dir: Path) -> tuple[list[dict], dict, dict]:
    from splitserve.sim.measure import QUICK, make_engine, warm_up

    load_start, started = os.getloadavg(), time.time()
    profile = setup_profile(model, setup, args)
    engine = make_engine(model, QUICK)
    warm_up(engine)
    runs, idle = measure_setup(model, setup, args, lambda: speed_factors(engine, profile))
    hop_s = calibrate_hop_s(idle, setup, profile)
    print(f"{setup}: idle TTFT {idle['median_ttft_ms']:.0f} ms -> hop {hop_s * 1e3:.2f} ms", flush=True)
    for measured in runs:
        measured["hop_s"] = hop_s
    rows, measured_runs = predicted_rows(setup, runs, profile, runs_dir)
    session = {"setup": setup, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
               "wall_s": round(time.time() - started, 1), "profile_meta": profile.meta,
               "corun": profile.host.get("corun"), "hop_s": hop_s,
               "idle_run": {k: v for k, v in idle.items() if k != "requests"}}
    return rows, measured_runs, session


def main() -> None:
    from splitserve.bench.provenance import portable_args

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--profile", type=Path, help="existing profile (default: measure one per setup, first)")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--corun", type=int, default=3, help="profile --corun: up to this many processes at once")
    parser.add_argument("--workloads", nargs="+", default=["sharegpt", "azure-code"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.5])
    parser.add_argument("--num-requests", type=int, default=30)
    parser.add_argument("--max-input-len", type=int, default=512)
    parser.add_argument("--max-output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true", help="keep the other setups' rows of --out")
    parser.add_argument("--predict-only", action="store_true",
                        help="measure nothing: predict the saved runs of --setups again with their sessions' profiles")
    parser.add_argument("--out", type=Path, default=RESULTS / "simulator_validation.json")
    args = parser.parse_args()
    from splitserve.modelgen.cache import ensure_model

    model = args.model or ensure_model("small")
    old = json.loads(args.out.read_text()) if (args.merge or args.predict_only) and args.out.is_file() else {}
    rows = [r for r in old.get("rows", []) if r["setup"] not in args.setups]
    measured_runs = {k: v for k, v in old.get("measured", {}).items() if k.rsplit(" ", 1)[0] not in args.setups}
    sessions = [s for s in old.get("sessions", []) if s["setup"] not in args.setups]
    runs_dir = args.out.with_suffix("")  # per run: measured and simulated bench JSON (`splitserve bench compare`)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for setup in args.setups:
        if args.predict_only:
            new_rows, new_runs = repredict_setup(setup, args, runs_dir)
            new_sessions = [s for s in old.get("sessions", []) if s["setup"] == setup]
        else:
            new_rows, new_runs, session = run_setup(model, setup, args, runs_dir)
            new_sessions = [{**session, "config": portable_args(vars(args))}]
        rows, sessions = rows + new_rows, sessions + new_sessions
        measured_runs.update(new_runs)
        order = list(SETUPS)
        rows.sort(key=lambda r: (order.index(r["setup"]), r["workload"] != "sharegpt", r["rate"]))
        report = {"benchmark": "simulator_validation", "model": model.name,
                  "method": __doc__.split("\n\n", 2)[2].strip(), "summary": summary(rows), "sessions": sessions,
                  "rows": rows, "measured": measured_runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")  # after each setup: a cut-off run keeps what it has
    plot(rows, args.out.with_suffix(".png"))
    for r in rows:
        print(r["setup"], r["workload"], r["rate"], {k: f"{r[k]['error']:+.0%}/{r[k]['own_cores_error']:+.0%}"
                                                     for k in METRICS if r[k]["error"] is not None})
    print(json.dumps(summary(rows), indent=1))


if __name__ == "__main__":
    main()
