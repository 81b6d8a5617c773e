"""Changing the reused KV itself (issue 15): passages stored under other contexts than "alone after
the head", each blended with `v_attn` at check layer 2, r = 0.15, against full prefill. Prompts as
chunkcache_quality.py (chat template, 4 passages). Stores:

    alone        each passage computed after the prompt head (what a node stores for a miss; baseline)
    g1           after the head + a neutral passage of another question (MuSiQue question 99's first);
                 the rows carry "not first" context, RoPE re-rotation moves them
    g1_first     g1, but the prompt's first passage as computed alone (exact where it sits)
    mean3_first  mean of the variants computed after 3 neutral passages (questions 97-99; K aligned
                 to one set of positions, context_mean.mean_kv); first passage alone
    other_order  Cache-Craft's live variants: every passage as computed in this question's prompt
                 with the passages in another order (the previous order of prefix caching)
    written_first    g1_first with a passage written for this benchmark instead of question 99's
                 (chunkcache_written_passage.txt: plain prose, 511 tokens); written91_first with its
                 title and first paragraph only (91 tokens)
    corpus_first g1_first with a different previous passage for each passage: question q + 1's passage
                 of the same rank (in-corpus text, unrelated to the question; what an ingest storing each
                 document also after another document of its batch would hold)
    other_and_alone  other_order's variants and each passage as computed alone after the head, the
                 planner choosing among them (what a node holds when it stores a missed passage
                 alone as well as recording it: the first passage then has an exact variant)

Cases are (store, selection): `v_attn` at check layer 2 with planning by ratio, `cachecraft`:
Cache-Craft planning (per-chunk budgets, min 0.15) with the same row scores, `ape_S`: cached K
rows x S (APE's attention temperature 1/S on cached rows). `--decode` decodes the greedy answer
(32 tokens) per case and scores it as chunkcache_quality.py does (pairs with chunkcache_paired.py);
without it only the first token (KL(full || case), top-1) is scored.

    nice -n 19 python benchmarks/chunkcache_context.py --questions 0,1,2 [--cases g1,other_order] [--decode]
"""

from __future__ import annotations

import functools
import json
import random
import statistics
import time
from pathlib import Path

from chunkcache_common import merged, parse_indices, pick_cases
from chunkcache_quality import FULL, load_questions, passages_stored, question_parser, run_case, score
from chunkcache_selection import first_token

from splitserve.bench import traces
from splitserve.bench.provenance import model_id
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.context_mean import mean_kv
from splitserve.chunkcache.documents import chunk_token_ids
from splitserve.chunkcache.qa_prompt import passage_text, qa_prompt
from splitserve.chunkcache.quality import first_token_scores
from splitserve.chunkcache.rope import RopeShifter
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier

RESULTS = Path(__file__).resolve().parent / "results" / "chunkcache_context.json"
WRITTEN = Path(__file__).resolve().parent / "chunkcache_written_passage.txt"
NEUTRAL = (99, 98, 97)  # questions whose first passage is the neutral "previous passage" (not among those run)
RATIO = 0.15


def blend(scale: float = 1.0) -> BlendConfig:
    return BlendConfig((2,), (RATIO,), deviation="v_attn", reused_k_scale=scale)


RATIO_L2 = ChunkCacheConfig(blend(), planning="ratio")
CASES = {
    "alone": ("alone", RATIO_L2),
    "g1": ("g1", RATIO_L2),
    "g1_first": ("g1_first", RATIO_L2),
    "mean3_first": ("mean3_first", RATIO_L2),
    "corpus_first": ("corpus_first", RATIO_L2),
    "corpus_first_cachecraft": ("corpus_first", ChunkCacheConfig(blend(), planning="cachecraft")),
    "other_order": ("other_order", RATIO_L2),
    "other_order_cachecraft": ("other_order", ChunkCacheConfig(blend(), planning="cachecraft")),
    "written_first": ("written_first", RATIO_L2),
    "written_first_cachecraft": ("written_first", ChunkCacheConfig(blend(), planning="cachecraft")),
    "written91_first": ("written91_first", RATIO_L2),
    "other_and_alone": ("other_and_alone", RATIO_L2),
    "other_and_alone_cachecraft": ("other_and_alone", ChunkCacheConfig(blend(), planning="cachecraft")),
    "alone_cachecraft": ("alone", ChunkCacheConfig(blend(), planning="cachecraft")),
    **{f"ape_{s}": ("alone", ChunkCacheConfig(blend(s), planning="ratio")) for s in (0.9, 1.1)},
}


@functools.cache
def musique() -> list[dict]:
    """The trace's 100 questions, read once."""
    return json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())


def neutral_passages(tokenizer, everything: list[dict]) -> list[list[int]]:
    return [chunk_token_ids(tokenizer, passage_text(everything[i]["ctxs"][0])) for i in NEUTRAL]


def after(engine, qa, neutral: list[int]):
    """(meta, kv) per passage, each computed after the head + one neutral passage."""
    return [after_one(engine, qa, i, neutral) for i in range(len(qa.spans))]


def after_one(engine, qa, i: int, previous: list[int]):
    """(meta, kv) of passage i computed after the head + `previous`."""
    s, n = qa.spans[i]
    return ChunkCache(engine, ChunkStore(LocalTier(1 << 34)), prefix=qa.head + previous).compute_alone(engine, qa.ids[s:s + n])


def corpus_previous(tokenizer, everything: list[dict], index: int, rank: int) -> list[int]:
    """The previous passage of corpus_first: question index + 1's passage of the same rank."""
    return chunk_token_ids(tokenizer, passage_text(everything[(index + 1) % len(everything)]["ctxs"][rank]))


def previous_order(index: int, num: int) -> list[int]:
    """The passages' order in the previous request (as chunkcache_quality.prefix_caching draws it)."""
    order, rng = list(range(num)), random.Random(index)
    while len(order) > 1 and order == sorted(order):
        rng.shuffle(order)
    return order


def build_stores(engine, qa, index: int, neutral: list[list[int]], names: set[str]) -> dict[str, ChunkStore]:
    """names: the stores the cases use; "alone" is always there (empty when no case uses it: full prefill's)."""
    stores = {"alone": passages_stored(engine, qa) if "alone" in names else ChunkStore(LocalTier(1 << 34))}
    alone = ChunkCache(engine, stores["alone"], prefix=qa.head)

    @functools.cache
    def computed_alone(i: int):
        s, n = qa.spans[i]
        return alone.compute_alone(engine, qa.ids[s:s + n])
    first = computed_alone(0) if names & {"g1_first", "mean3_first", "written_first", "written91_first",
                                          "corpus_first"} else None
    if names & {"g1", "g1_first", "mean3_first"}:
        g = [after(engine, qa, neutral[0])]
        stores["g1"] = _store(g[0])
        stores["g1_first"] = _store([first] + g[0][1:])
        if "mean3_first" in names:
            g += [after(engine, qa, p) for p in neutral[1:]]
            shifter = RopeShifter.for_model(engine.model_config)
            means = [(variants[0][0], mean_kv([kv for _, kv in variants], shifter)) for variants in zip(*g)]
            stores["mean3_first"] = _store([first] + means[1:])
    if names & {"written_first", "written91_first"}:
        written = WRITTEN.read_text().strip()
        for name, text in (("written_first", written), ("written91_first", "\n\n".join(written.split("\n\n")[:2]))):
            if name in names:
                stores[name] = _store([first] + after(engine, qa, chunk_token_ids(engine.tokenizer, text))[1:])
    if "corpus_first" in names:
        stores["corpus_first"] = _store([first] + [after_one(engine, qa, i, corpus_previous(
            engine.tokenizer, musique(), index, i)) for i in range(1, len(qa.spans))])
    if names & {"other_order", "other_and_alone"}:
        order = previous_order(index, len(qa.spans))
        chunks = [qa.ids[qa.spans[i][0]:sum(qa.spans[i])] for i in order]
        in_context = alone.compute_in_context(engine, chunks, qa.head)
        stores["other_order"] = _store(in_context)
        if "other_and_alone" in names:
            stores["other_and_alone"] = _store(in_context + [computed_alone(i) for i in range(len(qa.spans))])
    return stores


def _store(entries) -> ChunkStore:
    store = ChunkStore(LocalTier(1 << 34))
    for meta, kv in entries:
        store.put(meta, kv)
    return store


def one_question(engine, item: dict, index: int, num_passages: int, neutral, cases: dict, decode: bool) -> dict:
    qa = qa_prompt(engine.tokenizer, item, True, num_passages)
    stores = build_stores(engine, qa, index, neutral, {s for s, _ in cases.values()})
    out = {"index": index, "num_tokens": len(qa.ids), "cases": {}}
    if decode:
        full = run_case(engine, stores["alone"], qa, FULL, reuse=False)
        out["cases"]["full"] = score(full, full, item["answers"])
    else:
        full = first_token(engine, stores["alone"], qa, FULL, reuse=False)
    for name, (store, config) in cases.items():
        if decode:
            out["cases"][name] = score(full, run_case(engine, stores[store], qa, config), item["answers"])
            continue
        outcome = first_token(engine, stores[store], qa, config)
        out["cases"][name] = {**first_token_scores(full.logits, outcome.logits),
                              "computed_fraction": outcome.computed_rows / len(qa.ids)}
    return out


def summarize(questions: list[dict], baseline: str = "alone") -> dict:
    names = [n for n in questions[0]["cases"] if all(n in q["cases"] for q in questions)]
    metrics = [m for m in ("kl", "top1", "rouge_l", "exact", "f1", "computed_fraction") if m in questions[0]["cases"][names[-1]]]
    out = {}
    for name in names:
        rows = [q["cases"][name] for q in questions]
        out[name] = {m: statistics.mean(r[m] for r in rows) for m in metrics if all(m in r for r in rows)}
        out[name]["kl_median"] = statistics.median(r["kl"] for r in rows) if "kl" in rows[0] else None
        if baseline in names and name != baseline:
            d = [q["cases"][name]["kl"] - q["cases"][baseline]["kl"] for q in questions]
            out[name].update(kl_below_baseline=sum(x < 0 for x in d), kl_above_baseline=sum(x > 0 for x in d))
    return out


def main() -> None:
    parser = question_parser(__doc__.splitlines()[0], "0,1,2", RESULTS)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names (default: all)")
    parser.add_argument("--decode", action="store_true", help="decode and score answers (else first token only)")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], help="only merge these result files into --out")
    args = parser.parse_args()
    if args.merge:
        result = merged(args.merge, lambda runs: sorted((q for r in runs for q in r["questions"]),
                                                        key=lambda q: q["index"]), summarize)
        return args.out.write_text(json.dumps(result, indent=1))
    cases = pick_cases(args.cases, CASES)
    args.questions = ",".join(str(i) for i in parse_indices(args.questions))
    engine, items = load_questions(args)
    neutral = neutral_passages(engine.tokenizer, musique())
    run(args, engine, items, neutral, cases)


def run(args, engine, items, neutral, cases) -> None:
    questions, start = [], time.perf_counter()
    for i, item in items:
        questions.append(one_question(engine, item, i, args.passages, neutral, cases, args.decode))
        args.out.write_text(json.dumps({
            "model": model_id(args.model), "passages_per_question": args.passages, "ratio": RATIO, "check_layer": 2,
            "deviation": "v_attn", "decode": args.decode, "neutral_questions": NEUTRAL, "cases": list(cases),
            "threads": args.threads, "wall_s": time.perf_counter() - start, "summary": summarize(questions),
            "questions": questions}, indent=1))
        print(f"question {i} done, {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
