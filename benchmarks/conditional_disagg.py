"""Conditional disaggregation on the real model: what prefilling a short prompt on its decode node (the router's
--max-local-prefill-tokens) saves against the full hand-off (Reserve, Prefill on the prefill node, KV transfer,
Decode), by prompt length.

One cluster, 1 prefill + 1 decode node (SmolLM2, KV over torch/gloo, one torch thread each), and two routers over
the same nodes: one with conditional disaggregation off, one with it on up to `--threshold` tokens. Requests go
one at a time, alternating between the routers (so both meet the same machine), each a fresh random prompt (no
prefix-cache hits) asking `--max-tokens` tokens with EOS ignored. Reported per prompt length: median TTFT and
end-to-end time of each router and the median of the per-pair ratios (on / off). Then under load: `splitserve bench`
(ShareGPT lengths, prompts clipped to 512 tokens, outputs to 128, `--concurrency` requests at once) against each
router in turn, twice (off, on with one set of prompts, then on, off with another; the nodes run without a prefix
cache, so the second router of a pair finds none of the first's), with --loaded-threshold: what local prefills
cost the decode node's other requests (TPOT) and what they save (TTFT), medians and p99s.

    .venv/bin/python benchmarks/conditional_disagg.py [--model models/smollm2-135m-instruct] [--repeats 8]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from splitserve.bench.provenance import model_id, portable_args
from splitserve.client import Client
from splitserve.engine.config import ModelConfig
from splitserve.localcluster.cluster import LocalCluster
from splitserve.localcluster.procs import stop

ROOT = Path(__file__).resolve().parent
LENGTHS = (16, 64, 128, 256, 512)


def measure(urls: dict[str, str], vocab: int, args) -> dict:
    rng = random.Random(0)
    runs = {name: {n: {"ttft_s": [], "e2e_s": []} for n in LENGTHS} for name in urls}
    clients = {name: Client(url, timeout_s=120) for name, url in urls.items()}
    try:
        for repeat in range(args.repeats + 1):  # the first round warms both paths up and is dropped
            for n in LENGTHS:
                for name in (list(urls) if repeat % 2 == 0 else list(urls)[::-1]):
                    prompt = [rng.randrange(100, vocab) for _ in range(n)]
                    final = clients[name].complete(prompt_token_ids=prompt, max_tokens=args.max_tokens,
                                                   ignore_eos=True).final
                    if repeat:
                        runs[name][n]["ttft_s"].append(final.ttft_s)
                        runs[name][n]["e2e_s"].append(final.e2e_s)
    finally:
        for client in clients.values():
            client.close()
    return runs


LOADED_KEYS = ("completed", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms")


def loaded(urls: dict[str, str], args) -> dict[str, list[dict]]:
    """`splitserve bench` under load against each router, in the order off, on, on, off."""
    results = {name: [] for name in urls}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(("off", "on", "on", "off")):
            out = Path(tmp) / f"{i}.json"
            subprocess.run([sys.executable, "-m", "splitserve.cli", "bench", "--url", urls[name], "--workload",
                            "sharegpt", "--tokenizer", str(args.model), "--max-input-len", "512",
                            "--max-output-len", "128", "--concurrency", str(args.concurrency), "--num-requests",
                            str(args.loaded_requests), "--warmup", "2", "--seed", str(i // 2), "--json", str(out),
                            "--no-progress"], check=True, stdout=subprocess.DEVNULL)
            report = json.loads(out.read_text())
            results[name].append({key: report[key] for key in LOADED_KEYS})
    return results


def summary(runs: dict) -> list[dict]:
    rows = []
    for n in LENGTHS:
        off, on = runs["off"][n], runs["on"][n]
        row = {"prompt_tokens": n}
        for key in ("ttft_s", "e2e_s"):
            row[f"off_median_{key}"] = round(statistics.median(off[key]), 4)
            row[f"on_median_{key}"] = round(statistics.median(on[key]), 4)
            row[f"on_over_off_{key}"] = round(statistics.median(b / a for a, b in zip(off[key], on[key])), 3)
        rows.append(row)
    return rows


def router_with(cluster: LocalCluster, threshold: int):
    """One more router over the cluster's nodes, with conditional disaggregation up to `threshold` tokens."""
    cluster.router_args = ["--max-local-prefill-tokens", str(threshold)]
    return cluster.start_router()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--threshold", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--loaded-threshold", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--loaded-requests", type=int, default=40)
    parser.add_argument("--out", default="results/conditional_disagg_smollm2.json")
    args = parser.parse_args()
    # no prefix cache: both routers get the same prompts under load, and neither may find the other's
    with LocalCluster(args.model, prefill=1, decode=1, transport="torch", threads=1,
                      node_args=["--no-prefix-caching"]) as cluster:
        second = router_with(cluster, args.threshold)
        third = router_with(cluster, args.loaded_threshold)
        try:
            started = time.time()
            runs = measure({"off": cluster.url, "on": second.url}, ModelConfig.from_dir(args.model).vocab_size, args)
            under_load = loaded({"off": cluster.url, "on": third.url}, args)
        finally:
            stop([second, third])
    out = {"command": {"script": "benchmarks/conditional_disagg.py", **portable_args(vars(args))},
           "model": model_id(args.model), "setup": "1 prefill + 1 decode node, 1 torch thread each, KV over torch/gloo",
           "minutes": round((time.time() - started) / 60, 1), "rows": summary(runs),
           "loaded": {"workload": f"sharegpt, input <= 512, output <= 128, concurrency {args.concurrency}, "
                                  f"{args.loaded_requests} requests, threshold {args.loaded_threshold}",
                      "runs": under_load}}
    print(json.dumps(out, indent=2))
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
