"""N-gram speculative decoding (`--speculative-config`, splitserve/engine/speculation.py) on the real model: decode
speed with and without it, side by side, on answers that quote their prompt and on answers that do not.

Workloads (`--prompts` each, chat template, greedy, up to `--max-tokens`), from CacheBlend's MuSiQue passages
(../shared/data/traces): `quote` ("Repeat the following passage exactly"), `summarize` (a passage in two
sentences), `rag_qa` (three passages and the question, answered in a sentence or two) and `chat` (open-ended
instructions with nothing to copy). Engine in process (`--threads`): each prompt alone (batch 1), plain and
speculative alternating in turn, `--repeats` times, then the workload's prompts as one batch; decode tokens per
second of each (the tokens after every request has its first, over that time: prefill is the same either way), the
median of the per-prompt ratios, drafts kept / checked, and whether the answers are the same.
`--served`: the same prompts at concurrency 1 through a 1 prefill + 1 decode cluster (one thread per node) started
with and without the flag, asked alternately by the official `openai` client, streamed: median TPOT (time after the
first content chunk / later tokens) and end-to-end time.

    .venv/bin/python benchmarks/speculative_ngram.py [--model models/smollm2-135m-instruct] [--prompts 8]
        [--config '{"method": "ngram", "num_speculative_tokens": 3}'] [--threads 1] [--workloads quote chat]
        [--served]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from served_prompts import CHAT, ask_streamed, workloads
from splitserve.bench.provenance import model_id, portable_args
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.engine.speculation import NgramSpeculation

ROOT = Path(__file__).resolve().parent


def timed(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> tuple[list[list[int]], float, int]:
    """The answers, the seconds from the step that gave the last request its first token to the end, and the
    tokens produced in that time (the decode phase: prefill is the same with or without drafts)."""
    ids = [engine.add_request(p, params) for p in prompts]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    unfinished, decode_start, at_start = set(ids), None, 0
    while unfinished:
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
            if out.finished:
                unfinished.discard(out.request_id)
        if decode_start is None and all(tokens.values()):
            decode_start, at_start = time.perf_counter(), sum(map(len, tokens.values()))
    answers = [tokens[i] for i in ids]
    return answers, time.perf_counter() - decode_start, sum(map(len, answers)) - at_start


def compare(engines: dict[str, Engine], prompts: list[list[int]], params: SamplingParams, repeats: int) -> dict:
    """Both engines on the same prompts, alternating which goes first; tokens per second of each (medians)."""
    rates: dict[str, list[float]] = {name: [] for name in engines}
    answers = {}
    before = list(engines["speculative"].spec_counts)
    for r in range(repeats):
        for name in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
            answers[name], elapsed, decoded = timed(engines[name], prompts, params)
            rates[name].append(decoded / elapsed if elapsed > 0 else float("nan"))
    drafted, kept = (a - b for a, b in zip(engines["speculative"].spec_counts, before))
    tokens = sum(map(len, answers["plain"]))
    rates = {name: statistics.median(r) for name, r in rates.items()}
    same = sum(a == b for a, b in zip(answers["plain"], answers["speculative"]))
    return {"tokens": tokens, "plain_tok_s": round(rates["plain"], 1),
            "speculative_tok_s": round(rates["speculative"], 1),
            "ratio": round(rates["speculative"] / rates["plain"], 3), "drafted": drafted // repeats,
            "kept": kept // repeats, "same_answers": same,
            "answers": len(prompts)}


def in_process(args, texts: dict[str, list[str]]) -> dict:
    torch.set_num_threads(args.threads)
    spec = NgramSpeculation.from_json(args.config)
    engines = {"plain": Engine(args.model), "speculative": Engine(args.model, EngineConfig(speculative=spec))}
    params = SamplingParams(max_tokens=args.max_tokens)
    tokenizer = engines["plain"].tokenizer
    for engine in engines.values():  # warm-up: every kernel path once
        timed(engine, [tokenizer.encode_chat([{"role": "user", "content": CHAT[0]}])], SamplingParams(max_tokens=8))
    out = {}
    for workload, prompts in texts.items():
        ids = [tokenizer.encode_chat([{"role": "user", "content": text}]) for text in prompts]
        single = [compare(engines, [p], params, args.repeats) for p in ids]
        out[workload] = {"prompt_tokens_median": statistics.median(map(len, ids)),
                         "batch_1": _joined(single), "batch_all": compare(engines, ids, params, args.repeats)}
        print(workload, json.dumps(out[workload]), flush=True)
    return out


def _joined(runs: list[dict]) -> dict:
    """Per-prompt runs as one row: summed tokens and drafts, median rates and the median of per-prompt ratios."""
    drafted, kept = sum(r["drafted"] for r in runs), sum(r["kept"] for r in runs)
    return {"tokens": sum(r["tokens"] for r in runs),
            "plain_tok_s": round(statistics.median(r["plain_tok_s"] for r in runs), 2),
            "speculative_tok_s": round(statistics.median(r["speculative_tok_s"] for r in runs), 2),
            "ratio_median": round(statistics.median(r["ratio"] for r in runs), 4),
            "ratio_range": [min(r["ratio"] for r in runs), max(r["ratio"] for r in runs)],
            "drafted": drafted, "kept": kept, "kept_share": round(kept / drafted, 3) if drafted else None,
            "same_answers": sum(r["same_answers"] for r in runs), "answers": len(runs)}


def served(args, texts: dict[str, list[str]]) -> dict:
    import openai

    from splitserve.localcluster.cluster import LocalCluster

    flag = f"--speculative-config={args.config}"
    with LocalCluster(args.model, threads=1, http_port=-1, node_args=["--metrics-port=-1"]) as plain, \
            LocalCluster(args.model, threads=1, http_port=-1, node_args=[flag, "--metrics-port=-1"]) as spec:
        clients = {name: openai.OpenAI(base_url=c.http_url + "/v1", api_key="unused", timeout=600)
                   for name, c in (("plain", plain), ("speculative", spec))}
        model = Path(args.model).name
        out = {}
        for workload, prompts in texts.items():
            rows = {name: [] for name in clients}
            for r in range(args.repeats):
                for text in prompts:
                    for name in (list(clients) if r % 2 == 0 else list(clients)[::-1]):
                        rows[name].append(ask_streamed(clients[name], model, text, args.max_tokens))
            out[workload] = {name: {"tpot_ms_median": round(statistics.median(x["tpot_ms"] for x in v), 2),
                                    "e2e_s_median": round(statistics.median(x["e2e_s"] for x in v), 3),
                                    "ttft_ms_median": round(statistics.median(x["ttft_ms"] for x in v), 1)}
                             for name, v in rows.items()}
            out[workload]["tpot_ratio"] = round(out[workload]["speculative"]["tpot_ms_median"]
                                                / out[workload]["plain"]["tpot_ms_median"], 3)
            pairs = zip(rows["plain"], rows["speculative"])
            out[workload]["same_answers"] = sum(a["text"] == b["text"] for a, b in pairs)
            out[workload]["answers"] = len(rows["plain"])
            print("served", workload, json.dumps(out[workload]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--config", default='{"method": "ngram", "num_speculative_tokens": 3}')
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workloads", nargs="+", default=["quote", "summarize", "rag_qa", "chat"])
    parser.add_argument("--served", action="store_true")
    parser.add_argument("--out", default="results/speculative_ngram.json")
    args = parser.parse_args()
    started = time.time()
    texts = {name: prompts for name, prompts in workloads(args.prompts).items() if name in args.workloads}
    out = {"command": {"script": "benchmarks/speculative_ngram.py", **portable_args(vars(args))},
           "model": model_id(args.model), "in_process": in_process(args, texts)}
    if args.served:
        out["served"] = served(args, texts)
    out["minutes"] = round((time.time() - started) / 60, 1)
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
