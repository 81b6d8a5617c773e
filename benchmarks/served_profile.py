"""Where a served token's time goes: one colocated node at concurrency 1, against the same engine alone.

For each thread count: start `splitserve up` (one colocated node), drive it with `splitserve bench`
over OpenAI HTTP (fixed prompt and output lengths, concurrency 1), and read what each layer saw:

- the client's TPOT (`splitserve bench`, median over requests);
- the node's own TPOT (its `time_per_output_token_seconds` histogram: first to last token on the node);
- the node's mean decode step (`engine_step_seconds`, with each request's one prefill step taken out
  by subtracting the node's TTFT, which at concurrency 1 is that step);
- the CPU each process used over the bench (node, router, client), in cores;
- then, with the cluster stopped, the engine alone in this process: median batch-1 `engine.step()` after a
  prompt of the same length.

    python benchmarks/served_profile.py [--model DIR] [--threads 1 2] [--requests 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import torch
from decode_profile import engine_for, start_batch, step_ms
from vs_llamacpp_served import _stop, free_port, wait_ready

from splitserve.bench.provenance import portable, portable_args

MODEL = ".cache/models/smollm2-135m-instruct-s0-v1"
NODE_METRICS = ("engine_step_seconds", "time_per_output_token_seconds", "time_to_first_token_seconds")


def scrape(port: int) -> dict[str, float]:
    """name_sum / name_count of the node's histograms."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        for metric in NODE_METRICS:
            if name.endswith(f"{metric}_sum") or name.endswith(f"{metric}_count"):
                values[name.split("splitserve_", 1)[-1]] = float(value)
    return values


def process_cpu(root: psutil.Process) -> dict[str, float]:
    """CPU seconds so far of the cluster's processes, by role (the `splitserve.cli` subcommand)."""
    seconds = {}
    for proc in [root] + root.children(recursive=True):
        try:
            args = proc.cmdline()
            times = proc.cpu_times()
        except psutil.Error:
            continue
        role = args[args.index("splitserve.cli") + 1] if "splitserve.cli" in args else Path(args[0]).name
        seconds[role] = seconds.get(role, 0.0) + times.user + times.system
    return seconds


def bench_command(port: int, args, out: Path) -> list[str]:
    return [sys.executable, "-m", "splitserve.cli", "bench", "--url", f"http://127.0.0.1:{port}", "--workload", "fixed",
            "--input-len", str(args.input_len), "--output-len", str(args.output_len), "--tokenizer", args.model,
            "--concurrency", "1", "--num-requests", str(args.requests), "--warmup", "1", "--no-progress",
            "--json", str(out)]


def served_point(threads: int, args, workdir: Path) -> dict:
    http, metrics = free_port(), free_port()
    env = dict(os.environ, SPLITSERVE_METRICS_PORT=str(metrics))
    up = [sys.executable, "-m", "splitserve.cli", "up", "--model", args.model, "--colocated", "1", "--prefill", "0",
          "--decode", "0", "--threads", str(threads), "--port", str(free_port()), "--http-port", str(http)]
    cluster = subprocess.Popen(up, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(http, cluster, "splitserve up")
        out = workdir / f"bench-{threads}.json"
        client = subprocess.Popen(bench_command(http, args, out), stdout=subprocess.DEVNULL)
        before_metrics, before_cpu, start = scrape(metrics), process_cpu(psutil.Process(cluster.pid)), time.monotonic()
        client_cpu = 0.0
        while client.poll() is None:  # the client's CPU, read while it still exists
            client_cpu = _cpu_seconds(client.pid, client_cpu)
            time.sleep(0.2)
        wall = time.monotonic() - start
        after_metrics, after_cpu = scrape(metrics), process_cpu(psutil.Process(cluster.pid))
        if client.returncode:
            raise RuntimeError(f"splitserve bench exited with {client.returncode}")
        bench = json.loads(out.read_text())
    finally:
        _stop(cluster)
    delta = {key: after_metrics[key] - before_metrics.get(key, 0.0) for key in after_metrics}
    cores = {role: round((after_cpu[role] - before_cpu.get(role, 0.0)) / wall, 3) for role in after_cpu}
    cores["bench client"] = round(client_cpu / wall, 3)
    return {"client_tpot_median_ms": bench["median_tpot_ms"], "client_ttft_median_ms": bench["median_ttft_ms"],
            **_node_times(delta), "cores_used": cores, "wall_s": round(wall, 1)}


def _cpu_seconds(pid: int, last: float) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return last


def _node_times(delta: dict[str, float]) -> dict[str, float]:
    """The node's TPOT and its mean decode step, each request's prefill step (= its node TTFT) taken out."""
    prefills = delta["time_to_first_token_seconds_count"]
    decode_steps = delta["engine_step_seconds_count"] - prefills
    decode_s = delta["engine_step_seconds_sum"] - delta["time_to_first_token_seconds_sum"]
    return {"node_tpot_mean_ms": 1e3 * delta["time_per_output_token_seconds_sum"] / delta["time_per_output_token_seconds_count"],
            "node_decode_step_mean_ms": 1e3 * decode_s / decode_steps,
            "node_prefill_step_mean_ms": 1e3 * delta["time_to_first_token_seconds_sum"] / prefills}


def engine_alone(threads: int, args) -> float:
    torch.set_num_threads(threads)
    engine = engine_for(args.model)
    start_batch(engine, 1, args.input_len, args.steps + 10)  # the served prompt's length: attention reads as many keys
    step_ms(engine, 3)
    return statistics.median(step_ms(engine, args.steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--steps", type=int, default=41, help="engine-alone decode steps timed")
    parser.add_argument("--out", default="benchmarks/results/served_profile.json")
    args = parser.parse_args()
    points = {}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            load = os.getloadavg()[0]
            point = served_point(threads, args, Path(tmp))
            point["engine_alone_step_median_ms"] = round(engine_alone(threads, args), 2)
            point["load_average_1m"] = [load, os.getloadavg()[0]]
            points[str(threads)] = point
            print(f"threads {threads}: {json.dumps(point)}", flush=True)
    report = {"benchmark": "served_profile", "model": portable(args.model), "config": portable_args(vars(args)),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "points": points}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
