"""Simulator vs the real cluster on this machine: predicted and measured median and p99 TTFT
and TPOT, for two workloads at two rates each, on 1 prefill + 1 decode and on 2 colocated.

    python benchmarks/simulator_validation.py [--setups 1P+1D] [--num-requests 30] [--merge] [--interleave]

Per sitting (--merge keeps the rows of setups not measured in it):
1. Profile the `small` model in the same sitting (`splitserve profile --corun 3`: 1 torch thread,
   the nodes' default flags, plus the steps' stretch with 1..3 engine processes at once),
   unless --profile is given; one profile for the sitting's setups.
2. Start a real local cluster per setup (router + nodes, 1 thread each): one setup after the
   other, or with --interleave every setup's cluster at once, the setups taking turns run by
   run (the ranking of two setups a few per cent apart is then not decided by the machine's
   drift between them). Each workload and rate is one `splitserve bench` run (gRPC), whose
   per-request send times and lengths are replayed in the simulator.
3. Idle calibrations on the same cluster, each request alone: once after it starts, 6 short
   requests (64 tokens in, 4 out) give the hop cost (what the router, gRPC and the client add
   per call); before and after each run, 4 long ones (512 in, 24 out) give the prefill and decode
   speed: factors on the profile's step times that make the simulated median TTFT and TPOT the
   measured ones. The run is predicted at the geometric mean of its two calibrations. Nothing is
   taken from the run itself.
4. Predictions: `shared host` (host_cores = this machine's cores, all nodes on it: host.py) and
   `own cores` (the fleet default). Errors are (predicted - measured) / measured; the load
   average is recorded before and after every run.
5. Every node runs with `--step-log`: each run and calibration records how fast its steps ran
   against the profile (sim/step_speed.py, per kind). `run steps` predicts the run (shared host)
   at its own loaded step speed instead of the idle calibration's: the simulator's error with the
   machine's speed drift between calibration and run taken out. It is a diagnosis, read from the
   run itself, not a prediction.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETUPS = {"1P+1D": dict(prefill=1, decode=1, colocated=0), "2 colocated": dict(prefill=0, decode=0, colocated=2)}
METRICS = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms")
# each prediction: its name, and the keys of its value and its error in a row's metric
PREDICTIONS = (("shared_host", "predicted", "error"), ("own_cores", "own_cores", "own_cores_error"),
               ("run_steps", "run_steps", "run_steps_error"))


def bench_config(url: str, model: Path, workload: str, rate: float, args, seed: int = 0):
    from splitserve.bench.arrivals import ArrivalConfig
    from splitserve.bench.benchmark import BenchConfig
    from splitserve.bench.workloads import WorkloadConfig

    return BenchConfig(url=url, workload=WorkloadConfig(name=workload, seed=seed, max_input_len=args.max_input_len,
                                                        max_output_len=args.max_output_len),
                       arrival=ArrivalConfig(kind="poisson", rate=rate, seed=seed), num_requests=args.num_requests,
                       tokenizer=str(model), percentiles=(50.0, 99.0), label=f"{workload}@{rate}")


def started_cluster(cluster_class, model: Path, setup: str, step_logs: Path, tries: int = 3):
    """A started cluster whose nodes log their steps into `step_logs`; a node slow to start on a
    loaded machine (120 s limit) is tried again."""
    step_logs.mkdir(parents=True, exist_ok=True)
    for attempt in range(tries):
        cluster = cluster_class(model, threads=1, transport="torch", node_args=["--step-log", str(step_logs)],
                                **SETUPS[setup])
        try:
            cluster.start()
            return cluster
        except RuntimeError as e:
            print(f"{setup}: start {attempt + 1} failed ({str(e).splitlines()[0]})", flush=True)
    raise RuntimeError(f"{setup}: the cluster did not start in {tries} tries")


def run_speed(before: dict, after: dict) -> dict:
    """A run's speed per kind: the geometric mean of the calibrations before and after it (the
    machine drifts); the hop cost is the cluster's."""
    mean = {k: (before[k] * after[k]) ** 0.5 for k in ("prefill", "decode")}
    return mean | {"hop_s": before["hop_s"], "before": before, "after": after}


def fixed_run(cluster, model: Path, args, input_len: int, output_len: int, num: int, rate: float, seed: int) -> dict:
    """`num` requests of fixed lengths at a constant rate (alone in the cluster when the rate is low)."""
    from splitserve.bench import report
    from splitserve.bench.arrivals import ArrivalConfig
    from splitserve.bench.benchmark import run_benchmark
    from splitserve.bench.workloads import WorkloadConfig

    config = bench_config(cluster.url, model, "fixed", rate, args, seed=seed)
    return report.result_dict(run_benchmark(dataclasses.replace(
        config, workload=WorkloadConfig(name="fixed", input_len=input_len, output_len=output_len, seed=seed),
        num_requests=num, arrival=ArrivalConfig(kind="constant", rate=rate))))


def calibrate(cluster, model: Path, setup: str, profile, args, seed: int, hop_s: float | None = None) -> dict:
    """On the idle cluster, each request alone, 4 long requests (512 tokens in, 24 out, 2 s apart):
    the prefill and decode speed (factors on the profile's step times) that make the simulated
    median TTFT and TPOT the measured ones. Without `hop_s`, first 6 short ones (64 in, 4 out,
    1 s apart) and the hop cost solved with them (what the router, gRPC and the client add per
    call). Everything the loaded runs are predicted with comes from the same cluster, idle,
    minutes apart; nothing from the runs themselves."""
    short = None if hop_s is not None else fixed_run(cluster, model, args, 64, 4, 6, 1.0, seed)
    long = fixed_run(cluster, model, args, 512, 24, 4, 0.5, seed + 1)
    speed = solve_speed(short, long, setup, profile, hop_s)
    return speed | {"long_ttft_ms": long["median_ttft_ms"], "long_tpot_ms": long["median_tpot_ms"]} | (
        {"short_ttft_ms": short["median_ttft_ms"]} if short else {})


def solve_speed(short: dict | None, long: dict, setup: str, profile, hop_s: float | None = None) -> dict:
    """The hop cost (from the short runs' median TTFT, unless given), prefill speed (the long runs'
    median TTFT) and decode speed (their median TPOT), each solved given the others: a few rounds settle."""
    speed = {"prefill": 1.0, "decode": 1.0, "hop_s": 0.002 if hop_s is None else hop_s}
    targets = [("prefill", long, "median_ttft_ms"), ("decode", long, "median_tpot_ms")]
    if hop_s is None:
        targets.insert(0, ("hop_s", short, "median_ttft_ms"))
    for _ in range(4):
        for key, run, metric in targets:
            f = lambda x: sim_median(run, setup, profile, {**speed, key: x}, metric)
            speed[key] = solve(f, run[metric], speed[key])
    return speed


def solve(f, target: float, x0: float) -> float:
    """x > 0 with f(x) = target, f increasing and nearly linear: secant steps from x0 and 1.2 x0."""
    x1 = 1.2 * x0
    for _ in range(3):
        f0, f1 = f(x0), f(x1)
        if f1 == f0:
            return x1
        x0, x1 = x1, max(1e-6, x1 + (target - f1) * (x1 - x0) / (f1 - f0))
    return x1


def sim_median(run: dict, setup: str, profile, speed: dict, key: str) -> float:
    return predict({**run, "speed_factor": speed, "hop_s": speed["hop_s"]}, setup, profile, 0)[key]


def measured_run(cluster, model: Path, setup: str, point: tuple, args, calibration, step_logs: Path,
                 profile) -> dict:
    """One bench run between two calibrations (calibration(seed) -> its speed); the speed of the nodes'
    steps (their --step-log) in each of the three."""
    from splitserve.bench import report
    from splitserve.bench.benchmark import run_benchmark

    workload, rate, seed = point
    windows = {"before": [time.time()]}
    before = calibration(seed + 11)
    windows["run"] = [time.time()]
    load = os.getloadavg()[0]
    result = report.result_dict(run_benchmark(bench_config(cluster.url, model, workload, rate, args, seed)))
    result["loadavg_1m"] = [load, os.getloadavg()[0]]
    windows["after"] = [time.time()]
    result["speed_factor"] = factor = run_speed(before, calibration(seed + 13))
    windows["end"] = [time.time()]
    result["step_speed"] = window_speeds(step_logs, profile, windows)
    result["hop_s"] = factor["hop_s"]
    print(f"{setup} {workload}@{rate}: measured median TTFT {result['median_ttft_ms']:.0f} ms, "
          f"TPOT {result['median_tpot_ms']:.0f} ms (load {load:.1f}; idle calibration: prefill x{factor['prefill']:.2f}, "
          f"decode x{factor['decode']:.2f}, hop {factor['hop_s'] * 1e3:.1f} ms)", flush=True)
    return result


def window_speeds(step_logs: Path, profile, windows: dict) -> dict:
    """The nodes' step speed (per kind, against the profile) in the calibration before the run, the run,
    and the calibration after it."""
    from splitserve.sim.step_speed import folder_logs, step_speed

    logs, names = folder_logs(step_logs), list(windows)
    return {name: step_speed(logs, profile.step, windows[name][0], windows[nxt][0])
            for name, nxt in zip(names, names[1:])}


def run_steps_speed(measured: dict) -> dict:
    """The run's own step speed per kind when its steps ran alone (the simulator adds the co-run stretch
    itself); all its steps of the kind where none ran alone, the calibration's factor where it ran none."""
    own = measured["step_speed"]["run"]
    return {kind: own[f"{kind}_alone"] or own[kind] or measured["speed_factor"][kind] for kind in ("prefill", "decode")}


def workload_points(args) -> list[tuple[str, float, int]]:
    """(workload, rate, seed) per run: a seed per run, so no run finds the previous one's prompts in the
    prefix cache (with --interleave both setups run the same prompts)."""
    pairs = [(w, r) for w in args.workloads for r in args.rates]
    return [(w, r, args.seed + 100 * i) for i, (w, r) in enumerate(pairs)]


def measure_setups(model: Path, setups: list[str], profile, args) -> dict[str, list[dict]]:
    """Per setup, its measured runs. One setup at a time, or (--interleave) every setup's cluster up
    at once (the idle one costs a Stats poll per 0.5 s) and the setups taking turns run by run, so
    a drift of the machine's speed falls on both alike."""
    from splitserve.localcluster.cluster import LocalCluster

    out, logs = {}, args.step_logs or Path(tempfile.mkdtemp(prefix="splitserve-steps-"))
    groups = [setups] if args.interleave else [[s] for s in setups]
    for group in groups:
        clusters = {}
        try:
            hops = {}
            for setup in group:
                clusters[setup] = started_cluster(LocalCluster, model, setup, logs / slug(setup))
                fixed_run(clusters[setup], model, args, 64, 4, 2, 2.0, 12345)  # warm-up
                hops[setup] = calibrate(clusters[setup], model, setup, profile, args, 12346)["hop_s"]
                print(f"{setup}: hop {hops[setup] * 1e3:.2f} ms", flush=True)
            runs = {setup: [] for setup in group}
            for point in workload_points(args):
                for setup in group:
                    calibration = lambda seed: calibrate(clusters[setup], model, setup, profile, args, seed, hops[setup])
                    runs[setup].append(measured_run(clusters[setup], model, setup, point, args, calibration,
                                                    logs / slug(setup), profile))
        finally:
            for cluster in clusters.values():
                cluster.stop()
        out.update(runs)
    if not args.step_logs:
        shutil.rmtree(logs, ignore_errors=True)  # what they said is in the runs (step_speed)
    return out


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


def compare(setup: str, measured: dict, predictions: dict) -> dict:
    """One row: per metric, measured and each prediction ({"shared_host", "own_cores", "run_steps"}) with its error."""
    row = {"setup": setup, "workload": measured["workload"], "rate": measured["request_rate"],
           "completed": [measured["completed"], predictions["shared_host"]["completed"]],
           "loadavg_1m": measured["loadavg_1m"], "speed_factor": measured["speed_factor"],
           **({"step_speed": measured["step_speed"]} if "step_speed" in measured else {})}
    for key in METRICS:
        m = measured[key]
        row[key] = {"measured": m}
        for model, value_key, err in PREDICTIONS:
            if model in predictions:
                value = row[key][value_key] = predictions[model][key]
                row[key][err] = (value - m) / m if m else None
    return row


def summary(rows: list[dict]) -> dict:
    """Cells within target (median 15%, p99 30%) for each prediction; each (workload, rate): does the
    faster setup by median TTFT / TPOT come out the same measured and predicted?"""
    out = {}
    for model, _, err in PREDICTIONS:
        have = [r for r in rows if err in r[METRICS[0]]]
        if not have:
            continue
        within = {k: sum(abs(r[k][err]) <= (0.15 if k.startswith("median") else 0.30) for r in have) for k in METRICS}
        within["cells"] = len(have)
        out[model] = within
    ranking = []
    for workload, rate in sorted({(r["workload"], r["rate"]) for r in rows}):
        pair = {r["setup"]: r for r in rows if (r["workload"], r["rate"]) == (workload, rate)}
        if len(pair) < 2:
            continue
        cell = {"workload": workload, "rate": rate}
        for key in ("median_ttft_ms", "median_tpot_ms"):
            for model, value in (("measured", "measured"), *((model, v) for model, v, _ in PREDICTIONS)):
                if all(value in r[key] for r in pair.values()):
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
        return load_profile(args.profile), args.profile.name
    profile = run_profile(ProfileConfig(str(model), threads=1, corun=args.corun))
    path = profile.save(args.out.parent / f"profile_small_cpu_validation_{slug(setup)}.json")
    plot_profile(profile, path.with_suffix(".png"))
    return profile, path.name


def predicted_rows(setup: str, runs: list[dict], profile, runs_dir: Path) -> tuple[list[dict], dict]:
    """Predictions for the measured runs (hop_s and speed_factor in each); writes each run's JSON."""
    rows, measured_runs = [], {}
    for measured in runs:
        cores = len(os.sched_getaffinity(0))
        predicted = predict(measured, setup, profile, host_cores=cores)
        predictions = {"shared_host": predicted, "own_cores": predict(measured, setup, profile, host_cores=0)}
        if "step_speed" in measured:
            predictions["run_steps"] = predict({**measured, "speed_factor": run_steps_speed(measured)}, setup, profile,
                                               host_cores=cores)
        rows.append(compare(setup, measured, predictions))
        name = f"{slug(setup)}_{measured['workload']}_{measured['request_rate']}"
        (runs_dir / f"{name}_measured.json").write_text(json.dumps(measured, indent=1))
        (runs_dir / f"{name}_sim.json").write_text(json.dumps(predicted, indent=1))
        measured_runs[f"{setup} {measured['label']}"] = {k: v for k, v in measured.items() if k != "requests"}
    return rows, measured_runs


def repredict_setup(setup: str, session: dict, args, runs_dir: Path) -> tuple[list[dict], dict]:
    """--predict-only: the setup's saved measured runs and session profile, predicted again."""
    from splitserve.sim.profile import load_profile

    profile_file = session.get("profile", f"profile_small_cpu_validation_{slug(setup)}.json")
    profile = load_profile(args.out.parent / profile_file)
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob(f"{slug(setup)}_*_measured.json"))]
    if not runs:
        raise FileNotFoundError(f"no measured runs of {setup} in {runs_dir}")
    return predicted_rows(setup, runs, profile, runs_dir)


def run_setups(model: Path, args, runs_dir: Path) -> dict[str, tuple[list[dict], dict, dict]]:
    """Measure (one profile for all the setups of this sitting), then predict; per setup: rows,
    measured runs and the session record."""
    load_start, started = os.getloadavg(), time.time()
    name = args.setups[0] if len(args.setups) == 1 else "setups"  # one profile for the setups of this sitting
    profile, profile_file = setup_profile(model, name, args)
    out = {}
    for setup, runs in measure_setups(model, args.setups, profile, args).items():
        rows, measured_runs = predicted_rows(setup, runs, profile, runs_dir)
        session = {"setup": setup, "interleaved": args.interleave, "loadavg_start": load_start,
                   "loadavg_end": os.getloadavg(), "wall_s": round(time.time() - started, 1),
                   "profile": profile_file, "profile_meta": profile.meta, "corun": profile.host.get("corun")}
        out[setup] = rows, measured_runs, session
    return out


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
    parser.add_argument("--interleave", action="store_true",
                        help="one profile, every setup's cluster up at once, the setups taking turns run by run")
    parser.add_argument("--predict-only", action="store_true",
                        help="measure nothing: predict the saved runs of --setups again with their sessions' profiles")
    parser.add_argument("--step-logs", type=Path, help="keep the nodes' step logs in this folder (default: a temporary "
                        "one, removed at the end)")
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
    if args.predict_only:
        done = {}
        for setup in args.setups:
            session = next(s for s in old.get("sessions", []) if s["setup"] == setup)
            done[setup] = (*repredict_setup(setup, session, args, runs_dir), session)
    else:
        done = run_setups(model, args, runs_dir)
    for setup, (new_rows, new_runs, session) in done.items():
        session = session if args.predict_only else {**session, "config": portable_args(vars(args))}
        rows, sessions = rows + new_rows, sessions + [session]
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
        print(r["setup"], r["workload"], r["rate"], {k: "/".join(f"{r[k][e]:+.0%}" for _, _, e in PREDICTIONS if e in r[k])
                                                     for k in METRICS if r[k]["error"] is not None})
    print(json.dumps(summary(rows), indent=1))


if __name__ == "__main__":
    main()
