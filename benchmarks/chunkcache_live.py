"""Cache-Craft in live traffic, before vs after, on one RAG request stream (counting, not timing).

Requests: MuSiQue questions (`--questions`), each with its first `--passages` passages, asked
`--rounds` times; each time the passages come in one of `--orders` orders drawn for that
question (a retriever ranks the same passages a little differently from ask to ask). One
engine, the same requests for every mode, in-process (no cluster, no Redis); the local tier
holds `--local-fraction` of the distinct passages' KV (one variant each), so eviction matters.

    before   live variants off: a missed chunk is stored computed alone after the prompt head;
             local tier LRU (the behaviour up to this change)
    after    live variants (4 per chunk): chunks used in a context not stored yet are recorded
             as computed inside the request's prompt; local tier evicts by reuse x saving
    live_variants_lru, alone_score   each of the two changes alone

Per request and mode: the blended prefill (Cache-Craft planning, floor r = 0.15) or, with no
hit, the plain prefill; then the work the node does off the request path (stores / recordings).
Counted: prompt rows computed on the request path (mean over layers), tokens computed off it,
chunk hits, exact-context hits, and the answer (greedy, `--answer-tokens`) against the gold
answers (F1) and against full prefill's answer (ROUGE-L), first-token KL and top-1.

    python benchmarks/chunkcache_live.py [--model small] [--questions 8] [--rounds 4] [--passages 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from chunkcache_common import blend_and_decode, load_engine
from splitserve.bench import traces
from splitserve.bench.provenance import portable_args
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.documents import chunk_token_ids, document_prompt
from splitserve.chunkcache.qa_prompt import passage_text, qa_prompt
from splitserve.chunkcache.quality import answer_f1, first_token_scores, rouge_l_f1
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, SamplingParams

ROOT = Path(__file__).resolve().parent
MODES = {"before": ChunkCacheConfig(live_variants=0, eviction="lru"),
         "after": ChunkCacheConfig(live_variants=4, eviction="score"),
         "live_variants_lru": ChunkCacheConfig(live_variants=4, eviction="lru"),  # each change alone
         "alone_score": ChunkCacheConfig(live_variants=0, eviction="score")}
FULL = ChunkCacheConfig(BlendConfig((1,), (1.0,)), planning="ratio")


def requests(num_questions: int, passages: int, rounds: int, orders: int, seed: int) -> list[dict]:
    items = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())[:num_questions]
    rng = random.Random(seed)
    out = []
    for item in items:
        item["orders"] = [rng.sample(item["ctxs"][:passages], passages) for _ in range(orders)]
    for _ in range(rounds):
        for q in rng.sample(range(len(items)), len(items)):
            item = items[q]
            out.append({"question": item["question"], "gold": item["answers"], "q": q,
                        "ctxs": rng.choice(item["orders"])})
    return out


def prompt(tokenizer, req: dict, chat: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """chat: CacheBlend's QA prompt in the chat template (qa_prompt.py); else BOS, passages, question."""
    if chat:
        qa = qa_prompt(tokenizer, {"question": req["question"], "ctxs": req["ctxs"]}, True)
        return qa.ids, qa.spans
    return document_prompt(tokenizer, [c["text"] for c in req["ctxs"]], req["question"])


def decode_answer(engine: Engine, cache: ChunkCache, ids, spans, params) -> tuple[dict, object]:
    plan = cache.plan(ids, spans)
    tokens, outcome = blend_and_decode(engine, cache, ids, plan, params)  # no hit: every row computed (full prefill)
    return {"answer": engine.tokenizer.decode(tokens).strip(), "logits": outcome.logits,
            "computed": outcome.computed_rows}, plan


def background(engine: Engine, cache: ChunkCache, ids, spans, plan) -> int:
    """What the node computes after the request; -> tokens forwarded."""
    if cache.config.live_variants > 0:
        entries = cache.record(engine, ids, spans, plan.keys, plan.record)
        for meta, kv in entries:
            cache.store.put(meta, kv)
        return max((m.start + m.num_tokens for m, _ in entries), default=0)
    head = ids[:spans[0][0]]
    for i in plan.misses:
        s, n = spans[i]
        cache.store.put(*cache.compute_alone(engine, ids[s:s + n], head))
    return sum(len(head) + spans[i][1] for i in plan.misses)


def run_mode(engine: Engine, config: ChunkCacheConfig, stream: list[dict], full: list[dict], local_bytes: int,
             params: SamplingParams, chat: bool) -> dict:
    cache = ChunkCache(engine, ChunkStore(LocalTier(local_bytes, config.eviction), None,
                                          config.craft.max_variants), config)
    rows = []
    for req, ref in zip(stream, full):
        ids, spans = prompt(engine.tokenizer, req, chat)
        case, plan = decode_answer(engine, cache, ids, spans, params)
        bg = background(engine, cache, ids, spans, plan)
        rows.append({"q": req["q"], "prompt_tokens": len(ids), "computed": case["computed"], "background": bg,
                     "chunks": len(spans), "hits": len(plan.placed), "exact": plan.exact,
                     "f1": answer_f1(case["answer"], req["gold"]), "rouge_l": rouge_l_f1(case["answer"], ref["answer"]),
                     "same_answer": float(case["answer"] == ref["answer"]),
                     **first_token_scores(ref["logits"], case["logits"])})
    return summarize(rows, cache)


def summarize(rows: list[dict], cache: ChunkCache) -> dict:
    total = lambda k: sum(r[k] for r in rows)
    mean = lambda k: statistics.fmean(r[k] for r in rows)
    return {"requests": len(rows), "prompt_tokens": total("prompt_tokens"),
            "computed_tokens": round(total("computed"), 1), "background_tokens": total("background"),
            "computed_plus_background": round(total("computed") + total("background"), 1),
            "chunk_hit_rate": total("hits") / total("chunks"), "exact_hit_rate": total("exact") / total("chunks"),
            "f1": mean("f1"), "rouge_l_vs_full": mean("rouge_l"), "same_answer_as_full": mean("same_answer"),
            "first_token_kl": mean("kl"), "top1": mean("top1"), "counters": cache.store.metrics.snapshot(),
            "local_evicted": cache.store.local.num_evicted, "per_request": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small", help="a preset name or a model folder")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--passages", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--orders", type=int, default=2)
    p.add_argument("--local-fraction", type=float, default=0.6)
    p.add_argument("--answer-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="CacheBlend's QA prompt in the model's chat template")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--out", default=str(ROOT / "results" / "chunkcache_live.json"))
    args = p.parse_args()
    _, engine = load_engine(args.model, args.threads)
    stream = requests(args.questions, args.passages, args.rounds, args.orders, args.seed)
    params = SamplingParams(max_tokens=args.answer_tokens)
    start = time.perf_counter()
    reference = ChunkCache(engine, ChunkStore(LocalTier(0)), FULL)
    full = []
    for req in stream:
        ids, _ = prompt(engine.tokenizer, req, args.chat)
        full.append(decode_answer(engine, reference, ids, [], params)[0])
    cfg = engine.model_config
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * engine.config.torch_dtype.itemsize
    distinct = {passage_text(c) if args.chat else c["text"] for req in stream for c in req["ctxs"]}
    chunk_tokens = sum(len(chunk_token_ids(engine.tokenizer, d)) for d in distinct)
    local_bytes = int(args.local_fraction * chunk_tokens * per_token)
    modes = {name: run_mode(engine, MODES[name], stream, full, local_bytes, params, args.chat)
             for name in args.modes.split(",")}
    gold_full = statistics.fmean(answer_f1(f["answer"], r["gold"]) for f, r in zip(full, stream))
    result = {"model": args.model, "threads": args.threads, "args": portable_args(vars(args)), "distinct_passages": len(distinct),
              "distinct_passage_tokens": chunk_tokens, "local_tier_bytes": local_bytes,
              "full_prefill_f1": gold_full, "wall_s": time.perf_counter() - start, "modes": modes}
    Path(args.out).write_text(json.dumps(result, indent=1))
    for name, m in modes.items():
        print(f"{name:7s} computed {m['computed_tokens']:9.1f}  background {m['background_tokens']:7d}  "
              f"hit {m['chunk_hit_rate']:.2f}  exact {m['exact_hit_rate']:.2f}  F1 {m['f1']:.3f} "
              f"(full {gold_full:.3f})  ROUGE-L {m['rouge_l_vs_full']:.3f}  KL {m['first_token_kl']:.3f}  "
              f"top1 {m['top1']:.2f}")


if __name__ == "__main__":
    main()
