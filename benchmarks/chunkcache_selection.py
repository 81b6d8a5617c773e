"""Why HKVD does not beat random selection by answer ROUGE at r = 0.15 (issue 15): row choices
compared by the first token alone (KL(full || case), top-1), which needs no decoding, so more
questions fit. Prompts as chunkcache_quality.py (chat template, passages computed alone after the
head); every case recomputes the same number of rows (r = 0.15 of the cached rows):

    full_reuse      r = 0 (for scale)
    hkvd            layer-1 K deviation, squared L2 (the benchmark's CacheBlend)
    hkvd_k_rel      layer-1 K deviation relative to |K| (large-norm rows do not win by norm alone)
    hkvd_v          layer-1 V deviation (CacheBlend's prototype)
    hkvd_layer2     K deviation at layer 2 (one more layer of cross-passage attention seen)
    hkvd_gradual    check layers 1, 2, 3 at 0.3, 0.2, 0.15 (CacheBlend's gradual filtering)
    random_S        rows at random, seeds 0, 1, 2
    attn            query-aware: the layer-1 attention the forced rows (question, chat tail, last
                    token) pay each cached row, summed over heads and query rows
    k_attn, v_attn  layer-1 K / V deviation x that attention

Also per question: forced rows (head, question, last) and the rows of the first passage (it sits
where it was computed: zero deviation, so HKVD never spends budget there; random does).

    nice -n 19 python benchmarks/chunkcache_selection.py [--questions 0,1,2] [--passages 4] [--cases hkvd,attn]
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from chunkcache_common import merged, pick_cases, run_questions
from chunkcache_quality import FULL, load_questions, passages_stored, question_parser

from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.qa_prompt import qa_prompt
from splitserve.chunkcache.quality import first_token_scores
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.engine import SamplingParams

RESULTS = Path(__file__).resolve().parent / "results" / "chunkcache_selection.json"
RATIO = 0.15
CASES = {
    "full_reuse": BlendConfig((0,), (0.0,)),
    "hkvd": BlendConfig((1,), (RATIO,)),
    "hkvd_k_rel": BlendConfig((1,), (RATIO,), deviation="k_rel"),
    "hkvd_v": BlendConfig((1,), (RATIO,), deviation="v"),
    "hkvd_layer2": BlendConfig((2,), (RATIO,)),
    "hkvd_gradual": BlendConfig((1, 2, 3), (0.3, 0.2, RATIO)),
    **{f"random_{seed}": BlendConfig((1,), (RATIO,), random_seed=seed) for seed in (0, 1, 2)},
    **{name: BlendConfig((1,), (RATIO,), deviation=name) for name in ("attn", "k_attn", "v_attn")},
}
PARAMS = SamplingParams(max_tokens=1)


def first_token(engine, store, qa, config: ChunkCacheConfig, reuse: bool = True):
    cache = ChunkCache(engine, store, config, prefix=qa.head)
    outcome = cache.blend(engine, "s", qa.ids, cache.plan(qa.ids, qa.spans if reuse else []), PARAMS, 0)
    engine.cancel_reservation("s")
    return outcome


def one_question(engine, item: dict, num_passages: int, cases: dict[str, BlendConfig] = CASES) -> dict:
    qa = qa_prompt(engine.tokenizer, item, True, num_passages)
    store = passages_stored(engine, qa)
    full = first_token(engine, store, qa, FULL, reuse=False)
    out = {"num_tokens": len(qa.ids), "forced_rows": len(qa.ids) - qa.num_passage_tokens,
           "first_passage_rows": qa.spans[0][1], "cases": {}}
    for name, blend in cases.items():
        outcome = first_token(engine, store, qa, ChunkCacheConfig(blend, planning="ratio"))
        out["cases"][name] = {**first_token_scores(full.logits, outcome.logits),
                              "computed_fraction": outcome.computed_rows / len(qa.ids)}
    return out


def summarize(questions: dict) -> dict:
    rows = list(questions.values())
    names = [name for name in CASES if all(name in q["cases"] for q in rows)]
    summary = {name: {m: statistics.mean(q["cases"][name][m] for q in rows) for m in ("kl", "top1", "computed_fraction")}
               for name in names}
    for name in names:
        if name != "hkvd" and "hkvd" in names:  # paired: questions where this case's KL is below / above HKVD's
            d = [q["cases"][name]["kl"] - q["cases"]["hkvd"]["kl"] for q in rows]
            summary[name].update(kl_below_hkvd=sum(x < 0 for x in d), kl_above_hkvd=sum(x > 0 for x in d))
    if all(f"random_{s}" in names for s in (0, 1, 2)):
        summary["random_mean"] = {m: statistics.mean(summary[f"random_{s}"][m] for s in (0, 1, 2))
                                  for m in ("kl", "top1")}
    summary["forced_fraction"] = statistics.mean(q["forced_rows"] / q["num_tokens"] for q in rows)
    summary["first_passage_fraction_of_cached"] = statistics.mean(
        q["first_passage_rows"] / (q["num_tokens"] - q["forced_rows"]) for q in rows)
    return summary


def main() -> None:
    parser = question_parser(__doc__.splitlines()[0], "0,1,2", RESULTS)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names (default: all)")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], help="only merge these result files into --out")
    args = parser.parse_args()
    if args.merge:
        result = merged(args.merge, lambda runs: {i: q for r in runs for i, q in r["questions"].items()}, summarize)
        return args.out.write_text(json.dumps(result, indent=1))
    cases = pick_cases(args.cases, CASES)
    run_questions(args, *load_questions(args), lambda e, item, n: one_question(e, item, n, cases), summarize,
                  ratio=RATIO, cases=list(cases))


if __name__ == "__main__":
    main()
