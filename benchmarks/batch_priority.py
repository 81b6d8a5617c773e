"""What a running Batch API batch does to interactive chat, with and without priorities, on one machine.

One colocated node (2 threads) whose engine runs at most `--max-num-seqs` sequences (4: a node held to
a short TPOT), behind a router running `--batch-concurrency` batch lines at once (8: more than the node
takes, so batch lines also wait in the node's queue, as a batch sized to soak up capacity does). Each
round serves the same chat load (`splitserve bench` over HTTP: fixed lengths, `--concurrency` in flight,
output forced) alone, then beside a batch of `--batch-lines` chat lines whose bodies set priority 0 (the
same as the chat requests: first come, first served) and then beside the same batch at priority 1 (the
router's default for batch lines: chat goes first and preempts batch lines when the engine is full).
Each batch is cancelled once the chat run ends; its lines completed in the meantime give its throughput.
Per run: median and p99 TTFT and TPOT of the chat requests. Conditions take turns in every round; compare
ratios measured side by side.

    python benchmarks/batch_priority.py [--model smollm2-135m-instruct] [--rounds 3]
        [--out results/batch_priority_smollm2.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

import openai

from splitserve.bench.provenance import portable_args
from splitserve.bench.prompts import load_tokenizer
from splitserve.bench.workloads import WorkloadConfig, make_workload
from splitserve.localcluster.cluster import LocalCluster
from splitserve.modelgen import ensure_model

from fixed_load import run_fixed_load

CONDITIONS = ("alone", "batch at priority 0", "batch at priority 1")


def chat(url: str, args, tokenizer, seed: int) -> dict:
    result = run_fixed_load(url, args, tokenizer, seed=seed)
    s = result.metrics.stats
    return {"ttft_ms": s["ttft"].median_ms, "p99_ttft_ms": s["ttft"].percentiles_ms[-1][1],
            "tpot_ms": s["tpot"].median_ms, "p99_tpot_ms": s["tpot"].percentiles_ms[-1][1],
            "duration_s": result.metrics.duration_s}


class Batch:
    """A batch of chat lines at one priority, started on enter and cancelled on exit."""

    def __init__(self, client: openai.OpenAI, model: str, prompts: list[str], args, priority: int):
        lines = [{"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": args.output_len,
                           "ignore_eos": True, "temperature": 0, "priority": priority}} for i, p in enumerate(prompts)]
        data = io.BytesIO("\n".join(map(json.dumps, lines)).encode())
        data.name = "batch.jsonl"
        self.client, self.file_id, self.batch = client, client.files.create(file=data, purpose="batch").id, None

    def __enter__(self) -> "Batch":
        self.batch = self.client.batches.create(input_file_id=self.file_id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
        time.sleep(2.0)  # the node is full of batch lines before the chat load starts
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.started
        batch = self.client.batches.retrieve(self.batch.id)
        self.completed = batch.request_counts.completed
        if batch.status == "completed":
            return
        self.client.batches.cancel(self.batch.id)
        while self.client.batches.retrieve(self.batch.id).status != "cancelled":
            time.sleep(0.2)


def measure(model: Path, args, tokenizer) -> list[dict]:
    rounds = []
    router = ["--batch-concurrency", str(args.batch_concurrency)]
    node = ["--max-num-seqs", str(args.max_num_seqs)]
    with LocalCluster(model, prefill=0, decode=0, colocated=1, threads=2, http_port=-1, node_args=node,
                      router_args=router) as cluster:
        client = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=600)
        name = client.models.list().data[0].id
        chat(cluster.http_url, args, tokenizer, seed=999)  # warm-up
        for r in range(args.rounds):
            row = {}
            for k, condition in enumerate(CONDITIONS):
                seed = 100 * r + k  # fresh prompts every run: nothing comes from the prefix cache
                if condition == "alone":
                    row[condition] = chat(cluster.http_url, args, tokenizer, seed)
                else:
                    prompts = batch_prompts(args, tokenizer, seed + 50)
                    with Batch(client, name, prompts, args, priority=int(condition[-1])) as batch:
                        row[condition] = chat(cluster.http_url, args, tokenizer, seed)
                    row[condition]["batch_lines_per_min"] = 60 * batch.completed / batch.seconds
                print(f"  round {r} {condition}: TTFT {row[condition]['ttft_ms']:.0f} ms (p99 "
                      f"{row[condition]['p99_ttft_ms']:.0f}), TPOT {row[condition]['tpot_ms']:.1f} ms (p99 "
                      f"{row[condition]['p99_tpot_ms']:.1f})" + (f", batch {row[condition]['batch_lines_per_min']:.1f}"
                                                                 " lines/min" if condition != "alone" else ""),
                      flush=True)
            rounds.append(row)
    return rounds


def batch_prompts(args, tokenizer, seed: int) -> list[str]:
    workload = make_workload(WorkloadConfig(input_len=args.input_len, output_len=args.output_len, seed=seed),
                             tokenizer)
    requests = workload.requests()
    return [next(requests).prompt for _ in range(args.batch_lines)]


def summary(rounds: list[dict]) -> dict:
    med = lambda condition, key: statistics.median(r[condition][key] for r in rounds)  # noqa: E731
    out = {c: {key: med(c, key) for key in rounds[0][c]} for c in CONDITIONS}
    for c in CONDITIONS[1:]:
        out[c]["ttft_vs_alone"] = statistics.median(r[c]["ttft_ms"] / r["alone"]["ttft_ms"] for r in rounds)
        out[c]["tpot_vs_alone"] = statistics.median(r[c]["tpot_ms"] / r["alone"]["tpot_ms"] for r in rounds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a preset or a model folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=8, help="chat requests per run")
    parser.add_argument("--concurrency", type=int, default=2, help="chat requests in flight")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=48)
    parser.add_argument("--batch-lines", type=int, default=64)
    parser.add_argument("--batch-concurrency", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=4)
    parser.add_argument("--out", default="results/batch_priority_smollm2.json")
    args = parser.parse_args()
    model = Path(args.model) if Path(args.model).is_dir() else ensure_model(args.model)
    rounds = measure(model, args, load_tokenizer(model))
    out = {"benchmark": "batch_priority", "model": model.name, "config": portable_args(vars(args)),
           "method": __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1], "load_average": os.getloadavg(),
           "summary": summary(rounds), "rounds": rounds}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for condition, row in out["summary"].items():
        print(f"{condition}: TTFT {row['ttft_ms']:.0f} ms (p99 {row['p99_ttft_ms']:.0f}), TPOT {row['tpot_ms']:.1f} ms"
              + (f", TTFT x{row['ttft_vs_alone']:.2f}, TPOT x{row['tpot_vs_alone']:.2f} of alone, batch "
                 f"{row['batch_lines_per_min']:.1f} lines/min" if condition != "alone" else ""))


if __name__ == "__main__":
    main()
