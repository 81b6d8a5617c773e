"""Candidate fixes where HKVD recompute made answers worse than none (issue 15, item 3).

On the questions where the answer with HKVD at r = 0.15 strayed further from full prefill's than
full reuse's did, each candidate blends the chat prompt (passages computed alone after the head)
and the engine decodes the greedy answer; scored like `chunkcache_quality.score` against full prefill:

    full_reuse        r = 0
    hkvd              one global top-r by layer-1 K deviation (the benchmark's CacheBlend)
    hkvd_per_chunk    the same number of rows, split evenly over the moved passages (each its
                      top rows), so no passage goes without recompute
    hkvd_lead16       + the first 16 rows of every passage (EPIC's LegoLink)
    hkvd_gradual_v    V deviation, check layers 1, 2, 3 at 0.3, 0.2, 0.15

    python benchmarks/chunkcache_fixes.py [--questions 4,6,7] [--passages 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from chunkcache_quality import FULL, MAX_ANSWER_TOKENS, load_engine, run_case, score

from splitserve.bench import traces
from splitserve.bench.provenance import model_id
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.qa_prompt import qa_prompt
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.selection import ChunkBudget, hkvd_count
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import SamplingParams
from splitserve.modelgen import ensure_model

RESULTS = Path(__file__).resolve().parent / "results" / "chunkcache_quality_fixes.json"
RATIO = 0.15
CASES = {
    "full_reuse": BlendConfig((0,), (0.0,)),
    "hkvd": BlendConfig((1,), (RATIO,)),
    "hkvd_lead16": BlendConfig((1,), (RATIO,), lead_rows=16),
    "hkvd_gradual_v": BlendConfig((1, 2, 3), (0.3, 0.2, RATIO), deviation="v"),
}


def per_chunk(engine, store: ChunkStore, qa) -> dict:
    """HKVD's row count, split over the passages not at the position they were computed at."""
    cache = ChunkCache(engine, store, ChunkCacheConfig(BlendConfig((1,), (RATIO,)), planning="cachecraft"),
                       prefix=qa.head)
    plan = cache.plan(qa.ids, qa.spans)
    moved = [b for b in plan.budgets if b.start != len(qa.head)]
    total = hkvd_count(RATIO, plan.num_reused_tokens)
    share = total / sum(b.end - b.start for b in moved)
    plan.budgets = [ChunkBudget(b.start, b.end, min(1.0, share) if b in moved else 0.0) for b in plan.budgets]
    start, params = time.perf_counter(), SamplingParams(max_tokens=MAX_ANSWER_TOKENS)
    outcome = cache.blend(engine, "q", qa.ids, plan, params, 0)
    engine.admit_prefilled("q", qa.ids, outcome.sample.token_id, params, register_prefix=False)
    tokens = [outcome.sample.token_id]
    while engine.has_unfinished():
        tokens += [t for out in engine.step() for t in out.new_token_ids]
    return {"logits": outcome.logits, "answer": engine.tokenizer.decode(tokens).strip(),
            "computed_fraction": outcome.computed_rows / len(qa.ids), "time_s": time.perf_counter() - start}


def one_question(engine, item: dict, num_passages: int) -> dict:
    qa = qa_prompt(engine.tokenizer, item, True, num_passages)
    store = ChunkStore(LocalTier(1 << 34))
    ingest = ChunkCache(engine, store, prefix=qa.head)
    for s, n in qa.spans:
        store.put(*ingest.compute_alone(engine, qa.ids[s:s + n]))
    full = run_case(engine, store, qa, FULL, reuse=False)
    out = {"full": score(full, full, item["answers"])}
    for name, blend in CASES.items():
        out[name] = score(full, run_case(engine, store, qa, ChunkCacheConfig(blend, planning="ratio")), item["answers"])
        print(name, round(out[name]["kl"], 4), round(out[name]["rouge_l"], 2), out[name]["answer"], flush=True)
    out["hkvd_per_chunk"] = score(full, per_chunk(engine, store, qa), item["answers"])
    print("hkvd_per_chunk", round(out["hkvd_per_chunk"]["kl"], 4), round(out["hkvd_per_chunk"]["rouge_l"], 2),
          out["hkvd_per_chunk"]["answer"], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the smollm2-135m-instruct preset")
    parser.add_argument("--questions", default="4,6,7", help="comma-separated question indices")
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    everything = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())
    indices = [int(i) for i in args.questions.split(",")]
    args.model = args.model or ensure_model("smollm2-135m-instruct")
    engine = load_engine(args.model, [everything[i] for i in indices], args.passages)
    questions, start = {}, time.perf_counter()
    for i in indices:
        questions[i] = one_question(engine, everything[i], args.passages)
        names = list(questions[i])
        summary = {n: {m: statistics.mean(q[n][m] for q in questions.values())
                       for m in ("rouge_l", "exact", "kl", "top1", "computed_fraction")} for n in names}
        args.out.write_text(json.dumps({"model": model_id(args.model), "passages": args.passages, "ratio": RATIO,
                                        "wall_s": time.perf_counter() - start, "summary": summary,
                                        "questions": questions}, indent=1))
        print(f"question {i} done", flush=True)


if __name__ == "__main__":
    main()
