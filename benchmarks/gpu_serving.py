"""GPU serving (one prepared run on a lent GPU): splitserve clusters on one CUDA device under `splitserve bench`.

The `1b` preset (Llama-3.2-1B shape, random weights) in bf16, served three ways at once: one
colocated node, and 1 prefill + 1 decode node with the KV over gRPC or over gloo through host
memory (NCCL, the torch transport's CUDA path, needs two devices). Fixed 512 prompt / 128 output
tokens, closed loop at concurrency 1, 8 and 32, through the router's gRPC API (the random model's
ids go past its 8,192-token tokenizer, so the counts come from the server's usage, not from text).
The setups take turns; medians of --repeats. Writes benchmarks/results/serving_gpu.json (or
--out). Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import torch

from splitserve.localcluster.cluster import LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from vs_llamacpp_served import METRICS, bench_point  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serving_gpu.json"
DEVICE, DTYPE = "cuda", "bfloat16"  # set to "cpu", "float32" to dry-run the script on the CPU
SETUPS = {"colocated": dict(prefill=0, decode=0, colocated=1, transport="grpc"),
          "1p1d-grpc": dict(prefill=1, decode=1, transport="grpc"),
          "1p1d-gloo": dict(prefill=1, decode=1, transport="gloo")}


def start_clusters(model: Path, args) -> dict[str, LocalCluster]:
    node_args = ["--device", DEVICE, "--dtype", DTYPE, "--kv-cache-bytes", str(int(args.kv_cache_gib * (1 << 30))),
                 "--max-batched-tokens", "8192"]
    clusters = {name: LocalCluster(model, threads=args.threads, node_args=node_args, **layout)
                for name, layout in SETUPS.items()}
    errors = []

    def start(cluster: LocalCluster) -> None:
        try:
            cluster.start()
        except BaseException as err:  # noqa: BLE001 - reported below, after every start
            errors.append(err)

    threads = [threading.Thread(target=start, args=(c,)) for c in clusters.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        stop_all(clusters)
        raise errors[0]
    return clusters


def stop_all(clusters: dict[str, LocalCluster]) -> None:
    for cluster in clusters.values():
        cluster.stop()


def measure(model: Path, args, on_point) -> dict:
    runs = {name: {str(c): [] for c in args.concurrency} for name in SETUPS}
    clusters = start_clusters(model, args)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats):
                for c in args.concurrency:
                    for name, cluster in clusters.items():  # new prompts per point (bench_point's docstring)
                        runs[name][str(c)].append(bench_point(cluster.url, model, c, args, Path(tmp), 1000 * repeat + c))
                        on_point(summary(runs, args))
    finally:
        stop_all(clusters)
    return summary(runs, args)


def summary(runs: dict, args) -> dict:
    medians = {name: {c: {m: statistics.median(r[m] for r in points) for m in METRICS} for c, points in per_c.items() if points}
               for name, per_c in runs.items()}
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    return {"device": device, "dtype": DTYPE, "model": "1b preset (Llama-3.2-1B shape, random weights)",
            "config": {"input_len": args.served_input_len, "output_len": args.served_output_len, "threads": args.threads,
                       "concurrency": args.concurrency, "repeats": args.repeats,
                       "transports": {name: s["transport"] for name, s in SETUPS.items()},
                       "target": "router gRPC"},
            "medians": medians, "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a 1b-preset folder (splitserve make-model --preset 1b)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="torch threads per node")
    parser.add_argument("--kv-cache-gib", type=float, default=4.0, help="KV pool per node")
    parser.add_argument("--served-input-len", type=int, default=512)
    parser.add_argument("--served-output-len", type=int, default=128)
    parser.add_argument("--served-requests", type=int, default=0, help="requests per point (0: twice the concurrency, within 4..32)")
    args = parser.parse_args()
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_serving: no CUDA device here; skipped (run it on a lent GPU machine)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write = lambda result: args.out.write_text(json.dumps(result, indent=2) + "\n")  # noqa: E731
    result = measure(args.model, args, write)
    write(result)
    print(json.dumps(result["medians"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
