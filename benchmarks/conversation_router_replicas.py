"""Multi-turn chat through two router replicas, as a load balancer in front of them would send it: each turn of a
conversation goes through either replica (drawn at random, the same draws on every run: `--seed`). A turn's decode
node should be the one holding the conversation (decode affinity: its Reserve reuses the earlier turns, so only the
new KV moves); a replica learns what the other's turns left on the decode nodes only from the nodes' reports of
their prefix caches (NodeStats.kv_blocks).

One cluster (SmolLM2, 1 prefill + `--decode` decode nodes, KV over torch/gloo, one torch thread each, prefix caching
on) and two router replicas with the default flags; the chats of benchmarks/conversation_local_prefill.py (two
MuSiQue passages and a question, then three follow-ups, the second bringing one more passage), greedy, `--think-s`
between an answer and the next message (a user reading it), each under a fresh cache salt, through the official
`openai` client. Reported per turn: median TTFT and the median KV the decode nodes received. Run it at two commits
(a `git worktree`, with PYTHONPATH set to it and the worktree as the working directory: the services start with
`python -m`, which puts the working directory first) to compare routers that read the reports with routers that
cannot.

    .venv/bin/python benchmarks/conversation_router_replicas.py [--conversations 8] [--think-s 1.0] [--decode 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

import openai

import splitserve
from splitserve.bench import traces
from splitserve.bench.provenance import model_id, portable_args
from splitserve.localcluster.cluster import LocalCluster
from splitserve.localcluster.procs import stop
from conversation_local_prefill import FOLLOW_UPS, converse, first_message
from prom import kv_received_bytes, metric_sum

ROOT = Path(__file__).resolve().parent


def measure(urls: list[str], kv_received, args) -> list[list[dict]]:
    questions = traces.load_musique(traces.data_file(traces.MUSIQUE_FILE))
    clients = [openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=300) for url in urls]
    runs, rng = [], random.Random(args.seed)
    for i in range(args.conversations + 1):  # the first warms the paths up and is dropped
        question, passages = questions[i]
        picks = [rng.choice(clients) for _ in range(len(FOLLOW_UPS) + 1)]  # the replica of each turn
        turns = converse(picks, first_message(question, passages, args.passages), passages[args.passages],
                         kv_received, args, args.think_s)
        if i:
            runs.append(turns)
    return runs


def total_follow_up_kv_mb(runs: list[list[dict]]) -> float:
    return round(sum(t["kv_mb"] for c in runs for t in c[1:]), 1)


def summary(runs: list[list[dict]]) -> list[dict]:
    return [{"turn": turn + 1, "median_ttft_s": round(statistics.median(c[turn]["ttft_s"] for c in runs), 4),
             "median_kv_mb": round(statistics.median(c[turn]["kv_mb"] for c in runs), 2)}
            for turn in range(len(FOLLOW_UPS) + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--passages", type=int, default=2, help="passages in the first message (about 600 tokens each)")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--think-s", type=float, default=1.0, help="pause between an answer and the next message")
    parser.add_argument("--decode", type=int, default=2, help="decode nodes")
    parser.add_argument("--seed", type=int, default=0, help="of the replica each turn goes through")
    parser.add_argument("--out", default="results/conversation_router_replicas_smollm2.json")
    args = parser.parse_args()
    with LocalCluster(args.model.resolve(), prefill=1, decode=args.decode, transport="torch", threads=1, http_port=-1,
                      node_args=["--metrics-port=-1"]) as cluster:
        replica = cluster.start_router()
        decodes = [s.extra["metrics"] for role, s in cluster.nodes if role == "decode"]
        urls = [cluster.http_url, replica.extra["http"]]
        try:
            started = time.time()
            runs = measure(urls, lambda: kv_received_bytes(decodes), args)
            affinity = [metric_sum(url + "/metrics", "splitserve_router_decode_affinity_routes_total") for url in urls]
        finally:
            stop([replica])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(splitserve.__file__).parent).stdout.strip()
    out = {"command": {"script": "benchmarks/conversation_router_replicas.py", **portable_args(vars(args))},
           "model": model_id(args.model), "splitserve_commit": commit,
           "minutes": round((time.time() - started) / 60, 1),
           "setup": f"1 prefill + {args.decode} decode nodes, 1 torch thread each, KV over torch/gloo, prefix caching "
                    f"on; two router replicas, each turn through either (drawn with --seed); {len(FOLLOW_UPS) + 1} "
                    "turns per conversation, one warm-up conversation dropped",
           "decode_affinity_routes_with_warmup": affinity, "turns": summary(runs),
           "follow_up_kv_mb_total": total_follow_up_kv_mb(runs),
           "answers": [[t["answer"] for t in c] for c in runs],
           "per_turn_kv_mb": [[round(t["kv_mb"], 2) for t in c] for c in runs]}
    print(json.dumps({k: v for k, v in out.items() if k != "answers"}, indent=2))
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
