"""The Splitwise comparison on this machine: 1 prefill + 1 decode node (KV over torch/gloo) vs
2 colocated (mixed) nodes, the same budget of two node processes with one torch thread each.

Both clusters are started at the start and stay up; every scenario (Azure trace x offered rate)
runs on one, then the other, with the order alternating from scenario to scenario (ABBA), so
the machine's background load falls on both alike. Each run replays a window of the Azure LLM
inference trace (gaps rescaled to the offered rate, lengths clipped to what the `small` model
serves on one core) through the router's gRPC stream with `splitserve.bench`, after a warm-up.
Before the scenarios, each cluster serves a few requests alone (one at a time) to measure the
unloaded TTFT and TPOT that the SLOs are set against. The load average is recorded per run.

    .venv/bin/python benchmarks/disagg_vs_colocated.py            # ~5-6 minutes
    .venv/bin/python benchmarks/disagg_vs_colocated.py --quick    # one short scenario, a smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

from splitserve.bench import report
from splitserve.bench.arrivals import ArrivalConfig
from splitserve.bench.benchmark import BenchConfig, run_benchmark
from splitserve.bench.metrics import parse_slos
from splitserve.bench.prompts import load_tokenizer
from splitserve.bench.provenance import model_id
from splitserve.bench.runner import RunConfig
from splitserve.bench.workloads import WorkloadConfig
from splitserve.localcluster.cluster import LocalCluster

RESULTS = Path(__file__).parent / "results"
SETUPS = {"disagg-1p1d": dict(prefill=1, decode=1, transport="torch"), "colocated-2x": dict(prefill=0, decode=0, colocated=2)}
# (trace, offered req/s); each replays NUM_REQUESTS rows of the trace from WINDOW_START_S on.
SCENARIOS = (("azure-conv", 1.0), ("azure-conv", 2.0), ("azure-code", 2.0))
WINDOW_START_S = 600.0  # past the trace's ramp-up at its start
MAX_INPUT, MAX_OUTPUT = 512, 64
# Against the unloaded latencies measured here (the "unloaded" rows: a 512-token prompt alone
# has TTFT 0.4-0.7 s and TPOT 15-24 ms, depending on the load others put on the machine): a good
# request waits for at most about one other prompt before its own prefill, and decodes at
# 2-3x the unloaded TPOT (50 ms is also guidellm's example chat ITL SLO, 20 tokens/s).
SLOS = "ttft:1000,tpot:50"
PERCENTILES = (50.0, 90.0, 99.0)
KEYS = ("completed", "failed", "duration", "request_throughput", "request_goodput", "output_throughput",
        "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "p99_itl_ms", "median_e2el_ms",
        "p99_e2el_ms")


def bench_config(url: str, model: Path, trace: str, rate: float, num_requests: int, slos: dict,
                 seed: int = 0) -> BenchConfig:
    """`seed` picks the prompts' text: one per scenario, so no run finds the last one's prompts in the prefix cache."""
    workload = WorkloadConfig(name=trace, window_s=(WINDOW_START_S, WINDOW_START_S + 3600.0),
                              max_input_len=MAX_INPUT, max_output_len=MAX_OUTPUT, seed=seed)
    return BenchConfig(url=url, workload=workload, arrival=ArrivalConfig(kind="trace", rate=rate),
                       run=RunConfig(max_time_s=150.0), num_requests=num_requests, warmup=4, tokenizer=str(model),
                       percentiles=PERCENTILES, slos_ms=slos, label=f"{trace}@{rate:g}")


def unloaded(url: str, model: Path, tokenizer) -> dict:
    """TTFT and TPOT of 512-token prompts, 32 output tokens, sent one at a time."""
    config = BenchConfig(url=url, workload=WorkloadConfig(input_len=MAX_INPUT, output_len=32, seed=7),
                         run=RunConfig(max_concurrency=1), num_requests=5, warmup=2, tokenizer=str(model),
                         percentiles=PERCENTILES)
    d = report.result_dict(run_benchmark(config, tokenizer))
    return {k: d[k] for k in ("completed", "failed", "median_ttft_ms", "median_tpot_ms", "median_e2el_ms")}


def settle(max_load: float, max_wait_s: float = 60.0) -> float:
    """Wait (bounded) for other people's load to pass: the 1-minute load average below max_load."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def measure(clusters: dict, model: Path, scenarios, num_requests: int, slos: dict,
            settle_load: float = 4.0) -> list[dict]:
    tokenizer = load_tokenizer(model)
    runs = [{"setup": name, "scenario": "unloaded", **unloaded(c.url, model, tokenizer)} for name, c in clusters.items()]
    for i, (trace, rate) in enumerate(scenarios):
        order = list(clusters) if i % 2 == 0 else list(reversed(clusters))
        for name in order:
            load_before = settle(settle_load)
            config = bench_config(clusters[name].url, model, trace, rate, num_requests, slos, seed=100 + 10 * i)
            d = report.result_dict(run_benchmark(config, tokenizer))
            errors = sorted({r["error"] for r in d["requests"] if not r["success"]})
            runs.append({"setup": name, "scenario": f"{trace}@{rate:g}", "trace": trace, "offered_rate": rate,
                         **{k: d[k] for k in KEYS}, "load_avg_1m": [load_before, os.getloadavg()[0]],
                         "errors": errors[:5], "result": _slim(d)})
            print(_line(runs[-1]), flush=True)
    return runs


def _slim(d: dict) -> dict:
    """The run's full result without the per-chunk timestamps (kept small enough to commit)."""
    return {**d, "requests": [{k: v for k, v in r.items() if k != "token_times_s"} for r in d["requests"]]}


def _line(r: dict) -> str:
    return (f"{r['scenario']:<16} {r['setup']:<13} done {r['completed']:>3} failed {r['failed']:>2}  "
            f"TTFT p50/p99 {r['median_ttft_ms']:7.0f} {r['p99_ttft_ms']:7.0f} ms  "
            f"TPOT p50/p99 {r['median_tpot_ms']:6.1f} {r['p99_tpot_ms']:6.1f} ms  "
            f"goodput {r['request_goodput']:.2f}/{r['request_throughput']:.2f} req/s  load {r['load_avg_1m'][0]:.1f}")


def plot(runs: list[dict], path: Path, slos: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = [r for r in runs if r["scenario"] != "unloaded"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in loaded))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("ttft", "TTFT (ms)", slos.get("ttft")), ("tpot", "TPOT (ms)", slos.get("tpot")))
    for ax, (metric, label, slo) in zip(axes, panels):
        _bars(ax, loaded, scenarios, [(f"median_{metric}_ms", "p50"), (f"p99_{metric}_ms", "p99")], label)
        if slo:
            ax.axhline(slo, color="red", linestyle="--", linewidth=1, label=f"SLO {slo:g} ms")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    _bars(axes[2], loaded, scenarios, [("request_throughput", "completed"), ("request_goodput", "goodput")], "req/s")
    axes[2].legend(fontsize=7)
    slo_text = ", ".join(f"{k.upper()} <= {v:g} ms" for k, v in slos.items())
    fig.suptitle(f"1 prefill + 1 decode vs 2 colocated nodes (small model, 1 thread each); goodput SLOs: {slo_text}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(ax, runs: list[dict], scenarios: list[str], series: list[tuple[str, str]], ylabel: str) -> None:
    setups = list(SETUPS)
    width = 0.8 / (len(setups) * len(series))
    for k, (setup, (key, name)) in enumerate((s, x) for s in setups for x in series):
        values = [next((r[key] or 0 for r in runs if r["setup"] == setup and r["scenario"] == sc), 0) for sc in scenarios]
        ax.bar([i + (k - (len(setups) * len(series) - 1) / 2) * width for i in range(len(scenarios))], values, width,
               label=f"{setup} {name}", color=f"C{setups.index(setup)}", alpha=1.0 if name in ("p99", "goodput") else 0.5)
    ax.set_xticks(range(len(scenarios)), scenarios, fontsize=8)
    ax.set_ylabel(ylabel)


def code_version() -> dict:
    """The commit measured, and any local change to tracked files outside benchmarks/."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=Path(__file__).parent.parent).stdout  # noqa: E731
    return {"commit": git("rev-parse", "HEAD").strip(), "local_changes": git("diff", "--stat", "HEAD", "--", ".", ":!benchmarks")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the generated `small` model)")
    p.add_argument("--num-requests", type=int, default=60, help="trace rows per run")
    p.add_argument("--slo", default=SLOS)
    p.add_argument("--settle-load", type=float, default=4.0,
                   help="before each run, wait up to 60 s for the 1-minute load average to fall below this")
    p.add_argument("--quick", action="store_true", help="one scenario of 12 requests (smoke test)")
    p.add_argument("--out", default=str(RESULTS / "disagg_vs_colocated.json"))
    args = p.parse_args()
    if args.model:
        model = Path(args.model)
    else:
        from splitserve.modelgen.cache import ensure_model

        model = ensure_model("small")
    scenarios, num_requests = (SCENARIOS[:1], 12) if args.quick else (SCENARIOS, args.num_requests)
    slos = parse_slos(args.slo)
    started, load_start = time.time(), os.getloadavg()
    clusters = {}
    try:
        for name, shape in SETUPS.items():
            clusters[name] = LocalCluster(model, threads=1, **shape)
            clusters[name].start(print)
        runs = measure(clusters, model, scenarios, num_requests, slos, args.settle_load)
    finally:
        for cluster in clusters.values():
            cluster.stop()
    out = Path(args.out)
    meta = {"model": model_id(model), "setups": SETUPS, "slos_ms": slos, "num_requests": num_requests,
            "window_start_s": WINDOW_START_S, "max_input_len": MAX_INPUT, "max_output_len": MAX_OUTPUT,
            "code": code_version(), "cpus": os.cpu_count(), "machine": platform.platform(), "load_avg_start": load_start,
            "load_avg_end": os.getloadavg(), "wall_s": round(time.time() - started, 1),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))}
    report.save_json({"meta": meta, "runs": runs}, out)
    png = plot(runs, out.with_suffix(".png"), slos)
    print(f"wrote {out} and {png} in {meta['wall_s']} s; load average {load_start} -> {meta['load_avg_end']}")


if __name__ == "__main__":
    main()
