"""What each HTTP API costs next to chat: the same requests through `/v1/chat/completions`,
`/v1/responses` (OpenAI's Responses API) and `/v1/messages` (Anthropic's Messages API) of one local
cluster (router + 1 prefill + 1 decode node, 1 torch thread each), taking turns round by round.
Each run is `splitserve bench` (fixed lengths, `--concurrency` requests in flight, greedy, output
forced to `--output-len` with ignore_eos); per run its median TTFT and TPOT, then per API the median
over rounds and the median of its per-round ratios to chat (the machine is shared and noisy: only
ratios from one round mean much). The texts of the three APIs must be equal request by request.

    python benchmarks/api_fronts.py [--model smollm2-135m-instruct] [--rounds 3] [--num-requests 16]
        [--concurrency 4] [--input-len 128] [--output-len 32] [--out results/api_fronts_smollm2.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from splitserve.bench.provenance import portable_args
from splitserve.bench.prompts import load_tokenizer
from splitserve.localcluster.cluster import LocalCluster
from splitserve.modelgen import ensure_model

from fixed_load import run_fixed_load

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")


def bench(url: str, endpoint: str, args, tokenizer):
    result = run_fixed_load(url, args, tokenizer, endpoint, max_time_s=600)
    stats = result.metrics.stats
    return {"ttft_ms": stats["ttft"].median_ms, "tpot_ms": stats["tpot"].median_ms,
            "texts": [r.generated_text for r in result.run.records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a preset or a model folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--out", default="results/api_fronts_smollm2.json")
    args = parser.parse_args()
    model = Path(args.model) if Path(args.model).is_dir() else ensure_model(args.model)
    tokenizer = load_tokenizer(model)
    rounds = []
    with LocalCluster(model, prefill=1, decode=1, http_port=-1, threads=1) as cluster:
        bench(cluster.http_url, ENDPOINTS[0], args, tokenizer)  # warm-up: the nodes' first batches
        for i in range(args.rounds):
            order = ENDPOINTS[i % 3:] + ENDPOINTS[:i % 3]  # each API first in some round
            rounds.append({endpoint: bench(cluster.http_url, endpoint, args, tokenizer) for endpoint in order})
            print(f"round {i + 1}: " + ", ".join(f"{e} TTFT {r['ttft_ms']:.0f} ms TPOT {r['tpot_ms']:.1f} ms"
                                                  for e, r in rounds[-1].items()), flush=True)
    same_texts = all(len({json.dumps(r[e]["texts"]) for e in ENDPOINTS}) == 1 for r in rounds)
    summary = {}
    for endpoint in ENDPOINTS:
        summary[endpoint] = {
            f"median_{m}": statistics.median(r[endpoint][m] for r in rounds) for m in ("ttft_ms", "tpot_ms")} | {
            f"{m}_vs_chat": statistics.median(r[endpoint][m] / r[ENDPOINTS[0]][m] for r in rounds)
            for m in ("ttft_ms", "tpot_ms")}
    out = {"benchmark": "api_fronts", "model": model.name, "config": portable_args(vars(args)),
           "method": __doc__.split("\n\n")[0], "load_average": os.getloadavg(), "same_texts": same_texts,
           "summary": summary, "rounds": [{e: {k: v for k, v in r.items() if k != "texts"} for e, r in rnd.items()}
                                          for rnd in rounds]}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1), "\nsame texts on all three APIs:", same_texts)


if __name__ == "__main__":
    main()
