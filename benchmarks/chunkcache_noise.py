"""The noise floor of chunkcache_quality.py's scores: how far full prefill's own greedy answer moves
under perturbations that are not chunk reuse at all.

For each MuSiQue question (the chat-template QA prompt of chunkcache_quality.py) the reference is
full prefill through the blend path (as chunkcache_quality.py's `full`), greedy answer up to 32 tokens.
Against it:

- `engine_whole` / `engine_chunk256` / `engine_chunk64`: the same prompt through the engine's own
  scheduler, prefilled in one step or in chunks of 256 / 64 tokens (other kernels, other sums),
- `engine_batch2`: prefilled and decoded in one batch with the next question's prompt,
- `kv_exact`: the reference's own prompt KV reused at its own positions (check layer 0, r = 0: only
  the last row computed): reuse machinery without any reuse error (should be the reference),
- `kv_bf16` / `kv_fp16`: that KV round-tripped through bfloat16 / float16,
- `kv_noise_R`: that KV times (1 + R * N(0, 1)) per element (seeded per question).

Scores as chunkcache_quality.py: ROUGE-L F1 and exact agreement with the reference answer, F1 vs
gold, top-1 agreement of the first token (and KL(ref || case) where the case's logits are known).

    nice -n 19 python benchmarks/chunkcache_noise.py [--questions 0-19] [--passages 4] [--threads 1] [--kv-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from chunkcache_common import blend_and_decode
from chunkcache_quality import FULL, MAX_ANSWER_TOKENS, kv_budget_bytes
from splitserve.bench import traces
from splitserve.bench.provenance import model_id
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.qa_prompt import qa_prompt
from splitserve.chunkcache.quality import answer_f1, first_token_scores, rouge_l_f1
from splitserve.chunkcache.reuse import PlacedChunk
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig, RequestPlan
from splitserve.chunkcache.selection import ChunkBudget
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.modelgen import ensure_model

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "chunkcache_noise.json"
DIRECT = ChunkCacheConfig(BlendConfig((0,), (0.0,)), planning="ratio")
NOISES = (1e-3, 1e-2, 3e-2, 1e-1)
PARAMS = SamplingParams(max_tokens=MAX_ANSWER_TOKENS)


def decode_blended(engine: Engine, cache: ChunkCache, ids: list[int], plan: RequestPlan, capture=None) -> dict:
    """Blend with `plan`, then decode greedily in the engine from that KV; capture(layer, slots) sees each layer."""
    tokens, outcome = blend_and_decode(engine, cache, ids, plan, PARAMS, capture)
    return {"logits": outcome.logits, "tokens": tokens, "answer": engine.tokenizer.decode(tokens).strip()}


def reference(engine: Engine, ids: list[int], head: list[int]) -> tuple[dict, ChunkKV]:
    """Full prefill through the blend path, and the KV of every prompt row but the last, as written."""
    layers: dict[int, torch.Tensor] = {}
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 20)), FULL, prefix=head)
    ref = decode_blended(engine, cache, ids, cache.plan(ids, []),
                         lambda layer, slots: layers.setdefault(layer, engine.cache.read(layer, slots[:-1]).clone()))
    kv = torch.stack([layers[i] for i in range(len(layers))])  # [L, 2, n - 1, Hkv, D]
    return ref, ChunkKV(kv[:, 0].contiguous(), kv[:, 1].contiguous(), torch.arange(len(ids) - 1))


def perturbations(kv: ChunkKV, seed: int) -> dict[str, ChunkKV]:
    out = {"kv_exact": kv}
    for name, dtype in (("kv_bf16", torch.bfloat16), ("kv_fp16", torch.float16)):
        out[name] = ChunkKV(kv.k.to(dtype).float(), kv.v.to(dtype).float(), kv.positions)
    gen = torch.Generator().manual_seed(seed)
    for rel in NOISES:
        noisy = [t * (1 + rel * torch.randn(t.shape, generator=gen)) for t in (kv.k, kv.v)]
        out[f"kv_noise_{rel:g}"] = ChunkKV(*noisy, kv.positions)
    return out


def reused(engine: Engine, ids: list[int], head: list[int], kv: ChunkKV) -> dict:
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 20)), DIRECT, prefix=head)
    plan = RequestPlan([], [PlacedChunk(0, kv)], [ChunkBudget(0, kv.num_tokens, 0.0)])
    return decode_blended(engine, cache, ids, plan)


def through_engine(engine: Engine, prompts: list[list[int]], budget: int) -> dict:
    """The engine's own scheduler, prefilling at most `budget` tokens per step (chunked prefill)."""
    engine.scheduler.max_num_batched_tokens = budget
    done = engine.generate(prompts, PARAMS)[0]
    return {"logits": None, "tokens": done.token_ids, "answer": engine.tokenizer.decode(done.token_ids).strip()}


def score(ref: dict, case: dict, golds: list[str]) -> dict:
    out = {"answer": case["answer"], "f1": answer_f1(case["answer"], golds),
           "rouge_l": rouge_l_f1(case["answer"], ref["answer"]), "exact": float(case["answer"] == ref["answer"]),
           "top1": float(case["tokens"][:1] == ref["tokens"][:1])}
    if case["logits"] is not None:
        out["kl"] = first_token_scores(ref["logits"], case["logits"])["kl"]
        out["max_abs_logit_diff"] = float((ref["logits"] - case["logits"]).abs().max())
    return out


def one_question(engine: Engine, item: dict, nxt: dict, index: int, passages: int, kv_only: bool = False) -> dict:
    qa, other = qa_prompt(engine.tokenizer, item, True, passages), qa_prompt(engine.tokenizer, nxt, True, passages)
    golds = item["answers"]
    ref, kv = reference(engine, qa.ids, qa.head)
    cases = {"full": score(ref, ref, golds)}
    for name, budget in () if kv_only else (("engine_whole", 8192), ("engine_chunk256", 256), ("engine_chunk64", 64)):
        cases[name] = score(ref, through_engine(engine, [qa.ids], budget), golds)
    if not kv_only:
        cases["engine_batch2"] = score(ref, through_engine(engine, [qa.ids, other.ids], 16384), golds)
    for name, perturbed in perturbations(kv, index).items():
        cases[name] = score(ref, reused(engine, qa.ids, qa.head, perturbed), golds)
    return {"index": index, "question": item["question"], "gold": golds, "num_tokens": len(qa.ids), "cases": cases}


def summarize(questions: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(n for q in questions for n in q["cases"]):
        rows = [q["cases"][name] for q in questions if name in q["cases"]]
        out[name] = {m: statistics.mean(r[m] for r in rows) for m in rows[0] if m != "answer"}
        out[name].update(num_questions=len(rows), rouge_l_min=min(r["rouge_l"] for r in rows),
                         rouge_ge_0_8=sum(r["rouge_l"] >= 0.8 for r in rows) / len(rows))
    return out


def make_engine(model: Path, items: list[dict], passages: int) -> Engine:
    """One engine (memory is shared): KV for two prompts at once (engine_batch2)."""
    probe = Engine(model, EngineConfig(kv_cache_bytes=1 << 20, enable_prefix_caching=False))
    lengths = [len(qa_prompt(probe.tokenizer, it, True, passages).ids) for it in items]
    return Engine(model, EngineConfig(kv_cache_bytes=2 * kv_budget_bytes(probe, lengths), enable_prefix_caching=False))


def merge(paths: list[Path], out: Path) -> None:
    results = [json.loads(p.read_text()) for p in paths]
    questions = sorted({q["index"]: q for r in results for q in r["questions"]}.values(), key=lambda q: q["index"])
    merged = {**results[0], "num_questions": len(questions), "wall_s": sum(r["wall_s"] for r in results),
              "merged_from": [p.name for p in paths], "summary": summarize(questions), "questions": questions}
    out.write_text(json.dumps(merged, indent=1))


def parse_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the smollm2-135m-instruct preset")
    parser.add_argument("--questions", default="0-19", help="FIRST-LAST (inclusive)")
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kv-only", action="store_true", help="only the KV perturbations (no engine-path cases)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", type=Path, nargs="+", default=[], help="only merge these result files into --out")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    torch.set_num_threads(args.threads)
    everything = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())
    indices = parse_range(args.questions)
    args.model = args.model or ensure_model("smollm2-135m-instruct")
    engine = make_engine(args.model, [everything[i] for i in indices] + [everything[i + 1] for i in indices],
                           args.passages)
    start, questions = time.perf_counter(), []
    for i in indices:
        questions.append(one_question(engine, everything[i], everything[i + 1], i, args.passages, args.kv_only))
        result = {"model": model_id(args.model), "dtype": "float32", "chat_template": True,
                  "passages_per_question": args.passages, "max_answer_tokens": MAX_ANSWER_TOKENS,
                  "threads": args.threads, "num_questions": len(questions), "wall_s": time.perf_counter() - start,
                  "summary": summarize(questions), "questions": questions}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"question {i}: {time.perf_counter() - start:.0f}s", flush=True)
    for name, row in summarize(questions).items():
        print(f"{name:18}", {k: round(v, 3) for k, v in row.items()})


if __name__ == "__main__":
    main()
