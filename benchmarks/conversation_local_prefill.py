"""Multi-turn chat on the real model: a later turn repeats the conversation so far, which its decode node holds in
its prefix cache, so only the new message (and the last answer) are left to compute there. With
--max-local-prefill-tokens the router runs such a turn on that node whole; otherwise (or when the new message is
long) the prefill node computes it and moves the KV the decode node lacks (its Reserve reuses what it holds).

One cluster, 1 prefill + 1 decode node (SmolLM2, KV over torch/gloo, one torch thread each, prefix caching on), and
two routers over the same nodes: "off" (`--off-args`, default `--no-decode-affinity`: each request to the policy's
nodes) and "on" (`--on-args`, default conditional disaggregation up to 128 tokens). With `--decode 2 --on-args ""`
it measures decode affinity alone (the router's default). Each conversation asks about one MuSiQue question's
passages (the first user message carries `--passages` of them, about 600 tokens each), then `FOLLOW_UPS` (the second
brings one more passage: too long to run locally), greedy, `--max-tokens` per answer, through the official `openai`
client (chat completions, streamed: TTFT is the first content chunk's). Every conversation runs on both routers, in
alternating order, each time under a new cache salt (vLLM's `cache_salt`), so neither run finds the other's blocks.
Reported per turn: median TTFT on each router and the median of the per-conversation ratios (on / off); how many
turns ran locally, and whether both routers gave the same answers. `--concurrency N` runs N conversations at once
(the routers alternating batch by batch): then the KV received and the wall time come as each router's totals.
`--lora NAME=PATH` has the nodes serve a LoRA adapter and every turn run it.

    .venv/bin/python benchmarks/conversation_local_prefill.py [--model models/smollm2-135m-instruct] [--conversations 8]
        [--decode 2] [--concurrency 4] [--on-args="--max-local-prefill-tokens 128"] [--off-args=--no-decode-affinity]
        [--lora ahoy=.cache/adapters/smollm2-ahoy]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from splitserve.bench import traces
from splitserve.bench.provenance import model_id, portable_args
from splitserve.localcluster.cluster import LocalCluster
from splitserve.localcluster.procs import stop
from prom import kv_received_bytes, metric_sum

ROOT = Path(__file__).resolve().parent
FOLLOW_UPS = ("Answer in one short sentence.", "Here is one more passage:\n\n{passage}\n\nDoes it change your answer?",
              "Which people or places do the passages name?")
MODEL = "smollm2-135m-instruct"


def first_message(question: str, passages: tuple[str, ...], count: int) -> str:
    return "\n\n".join(passages[:count]) + f"\n\nUsing the passages above, answer: {question}"


def converse(clients: list[openai.OpenAI], first: str, extra_passage: str, kv_received, args,
             think_s: float = 0.0) -> list[dict]:
    """One conversation, turn by turn (turn i through clients[i % len(clients)], `think_s` after each answer): TTFT,
    answer and the KV the decode nodes received for each."""
    messages, turns, salt = [{"role": "user", "content": first}], [], uuid.uuid4().hex
    for turn, follow_up in enumerate((None, *FOLLOW_UPS)):
        if follow_up is not None:
            time.sleep(think_s)
            messages.append({"role": "user", "content": follow_up.format(passage=extra_passage)})
        received, started, ttft, parts = kv_received(), time.perf_counter(), None, []
        client = clients[turn % len(clients)]
        stream = client.chat.completions.create(model=args.lora_name or MODEL, messages=messages,
                                                max_tokens=args.max_tokens, temperature=0, stream=True,
                                                extra_body={"cache_salt": salt})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft or time.perf_counter() - started
                parts.append(chunk.choices[0].delta.content)
        answer = "".join(parts)
        messages.append({"role": "assistant", "content": answer})
        turns.append({"ttft_s": ttft, "answer": answer, "kv_mb": (kv_received() - received) / 1e6})
    return turns


def measure(urls: dict[str, str], kv_received, args) -> tuple[dict[str, list[list[dict]]], dict[str, dict]]:
    """Each router's conversations (`--concurrency` at a time, the routers alternating batch by batch) and, per
    router, the KV received and the wall time of its batches."""
    questions = traces.load_musique(traces.data_file(traces.MUSIQUE_FILE))
    clients = {name: openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=300) for name, url in urls.items()}
    turn_kv = kv_received if args.concurrency == 1 else (lambda: 0.0)  # concurrent turns: only batch totals

    def chat(name: str, i: int) -> list[dict]:
        question, passages = questions[i]
        return converse([clients[name]], first_message(question, passages, args.passages), passages[args.passages],
                        turn_kv, args)
    for name in urls:
        chat(name, 0)  # warms the paths up; dropped
    runs, totals = {name: [] for name in urls}, {name: {"kv_mb": 0.0, "wall_s": 0.0} for name in urls}
    for b, first in enumerate(range(1, args.conversations + 1, args.concurrency)):
        batch = range(first, min(first + args.concurrency, args.conversations + 1))
        for name in (list(urls) if b % 2 == 0 else list(urls)[::-1]):
            received, started = kv_received(), time.perf_counter()
            with ThreadPoolExecutor(len(batch)) as pool:
                runs[name] += pool.map(lambda i: chat(name, i), batch)
            totals[name]["kv_mb"] += (kv_received() - received) / 1e6
            totals[name]["wall_s"] += time.perf_counter() - started
    return runs, {name: {k: round(v, 2) for k, v in t.items()} for name, t in totals.items()}


def summary(runs: dict[str, list[list[dict]]]) -> dict:
    off, on = runs["off"], runs["on"]
    rows = []
    for turn in range(len(FOLLOW_UPS) + 1):
        ttft = {name: [c[turn]["ttft_s"] for c in conversations] for name, conversations in runs.items()}
        kv = {name: [c[turn]["kv_mb"] for c in conversations] for name, conversations in runs.items()}
        row = {"turn": turn + 1, "off_median_ttft_s": round(statistics.median(ttft["off"]), 4),
               "on_median_ttft_s": round(statistics.median(ttft["on"]), 4),
               "on_over_off": round(statistics.median(b / a for a, b in zip(ttft["off"], ttft["on"])), 3)}
        if any(kv["off"] + kv["on"]):  # per turn only when conversations ran one at a time
            row.update(off_median_kv_mb=round(statistics.median(kv["off"]), 2),
                       on_median_kv_mb=round(statistics.median(kv["on"]), 2))
        rows.append(row)
    return {"turns": rows,
            "same_answers": sum(a["answer"] == b["answer"] for x, y in zip(off, on) for a, b in zip(x, y)),
            "answers": sum(len(c) for c in off)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--on-args", default="--max-local-prefill-tokens 128", help="the 'on' router's flags")
    parser.add_argument("--off-args", default="--no-decode-affinity", help="the 'off' router's flags")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--passages", type=int, default=2, help="passages in the first message (about 600 tokens each)")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--decode", type=int, default=1, help="decode nodes")
    parser.add_argument("--concurrency", type=int, default=1, help="conversations at once (>1: KV as batch totals)")
    parser.add_argument("--lora", help="NAME=PATH: the nodes serve this adapter and every request runs it")
    parser.add_argument("--out", default="results/conversation_local_prefill_smollm2.json")
    args = parser.parse_args()
    args.lora_name = args.lora.partition("=")[0] if args.lora else None
    lora_args = ["--lora-modules", args.lora] if args.lora else []
    with LocalCluster(args.model, prefill=1, decode=args.decode, transport="torch", threads=1, http_port=-1,
                      node_args=["--metrics-port=-1", *lora_args], router_args=shlex.split(args.off_args)) as cluster:
        cluster.router_args = shlex.split(args.on_args)
        on = cluster.start_router()
        decodes = [s.extra["metrics"] for role, s in cluster.nodes if role == "decode"]
        try:
            started = time.time()
            urls = {"off": cluster.http_url, "on": on.extra["http"]}
            runs, totals = measure(urls, lambda: kv_received_bytes(decodes), args)
            routes = {name: {kind: metric_sum(url + "/metrics", f"splitserve_router_{kind}_total")
                             for kind in ("local_prefills", "decode_affinity_routes")} for name, url in urls.items()}
        finally:
            stop([on])
    out = {"command": {"script": "benchmarks/conversation_local_prefill.py", **portable_args(vars(args))},
           "model": model_id(args.model), "minutes": round((time.time() - started) / 60, 1),
           "setup": f"1 prefill + {args.decode} decode node(s), 1 torch thread each, KV over torch/gloo, prefix "
                    f"caching on; routers off: {args.off_args!r}, on: {args.on_args!r}; "
                    f"{len(FOLLOW_UPS) + 1} turns per conversation, one warm-up conversation dropped",
           "routes_with_warmup": routes, "totals": totals, **summary(runs),
           "per_turn_ttft_s": {name: [[round(t["ttft_s"], 4) for t in c] for c in conversations]
                               for name, conversations in runs.items()}}
    print(json.dumps(out, indent=2))
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
