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

import statistics
from pathlib import Path

from chunkcache_common import run_questions
from chunkcache_quality import FULL, load_questions, passages_stored, question_parser, run_case, score

from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.qa_prompt import qa_prompt
from splitserve.chunkcache.runner import ChunkCacheConfig
from splitserve.chunkcache.selection import ChunkBudget, hkvd_count

RESULTS = Path(__file__).resolve().parent / "results" / "chunkcache_quality_fixes.json"
RATIO = 0.15
CASES = {
    "full_reuse": BlendConfig((0,), (0.0,)),
    "hkvd": BlendConfig((1,), (RATIO,)),
    "hkvd_lead16": BlendConfig((1,), (RATIO,), lead_rows=16),
    "hkvd_gradual_v": BlendConfig((1, 2, 3), (0.3, 0.2, RATIO), deviation="v"),
}


def per_chunk(qa, plan) -> None:
    """HKVD's row count, split over the passages not at the position they were computed at."""
    moved = [b for b in plan.budgets if b.start != len(qa.head)]
    share = hkvd_count(RATIO, plan.num_reused_tokens) / sum(b.end - b.start for b in moved)
    plan.budgets = [ChunkBudget(b.start, b.end, min(1.0, share) if b in moved else 0.0) for b in plan.budgets]


def one_question(engine, item: dict, num_passages: int) -> dict:
    qa = qa_prompt(engine.tokenizer, item, True, num_passages)
    store = passages_stored(engine, qa)
    full = run_case(engine, store, qa, FULL, reuse=False)
    out = {"full": score(full, full, item["answers"])}
    for name, blend in CASES.items():
        out[name] = score(full, run_case(engine, store, qa, ChunkCacheConfig(blend, planning="ratio")), item["answers"])
        print(name, round(out[name]["kl"], 4), round(out[name]["rouge_l"], 2), out[name]["answer"], flush=True)
    craft = ChunkCacheConfig(BlendConfig((1,), (RATIO,)), planning="cachecraft")  # per-chunk budgets
    out["hkvd_per_chunk"] = score(full, run_case(engine, store, qa, craft, adjust=lambda plan: per_chunk(qa, plan)),
                                  item["answers"])
    print("hkvd_per_chunk", round(out["hkvd_per_chunk"]["kl"], 4), round(out["hkvd_per_chunk"]["rouge_l"], 2),
          out["hkvd_per_chunk"]["answer"], flush=True)
    return out


def summarize(questions: dict) -> dict:
    names = next(iter(questions.values()))
    return {n: {m: statistics.mean(q[n][m] for q in questions.values())
                for m in ("rouge_l", "exact", "kl", "top1", "computed_fraction")} for n in names}


def main() -> None:
    args = question_parser(__doc__.splitlines()[0], "4,6,7", RESULTS).parse_args()
    run_questions(args, *load_questions(args), one_question, summarize, ratio=RATIO)


if __name__ == "__main__":
    main()
