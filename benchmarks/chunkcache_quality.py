"""Blending quality vs the recompute ratio: CacheBlend on the `small` model, MuSiQue passages.

Each prompt is 10 retrieved passages + the question (CacheBlend's musique_s sample). Every
passage's KV is computed alone (after BOS, as ingest stores it); the prompt is then prefilled
blended at ratio r in {0, 0.05, 0.15, 0.3, 1.0} (check layer 1), choosing the recomputed rows by
KV deviation (HKVD) or at random, and compared with a full prefill of the same ids: KL(full ||
blend) of the next-token distribution after the prompt, top-1 agreement, and agreement of the
first 16 greedy tokens (decoded by the engine from the blended KV). Random weights: the model
has no learned attention sparsity, so only the ordering of the curves is evidence.

    python benchmarks/chunkcache_quality.py [--prompts 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from splitserve.bench import traces
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.documents import document_prompt
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.modelgen import ensure_model

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "chunkcache_quality.json"
TRACE = traces.data_file(traces.MUSIQUE_FILE)
RATIOS = (0.0, 0.05, 0.15, 0.3, 1.0)
NUM_GREEDY = 16


def run_case(engine: Engine, store: ChunkStore, ids: list[int], spans, ratio: float, seed: int | None):
    """Blends, then decodes greedily in the engine -> (last-token logits, 16 greedy tokens, rows computed)."""
    cache = ChunkCache(engine, store, ChunkCacheConfig(BlendConfig((1,), (ratio,), random_seed=seed), planning="ratio"))
    params = SamplingParams(max_tokens=NUM_GREEDY, ignore_eos=True)
    plan = cache.plan(ids, spans)
    outcome = cache.blend(engine, "q", ids, plan, params, 0)
    slots = engine.kv_slots(engine.reserved["q"], len(ids))
    last_kv = engine.cache.read(engine.model_config.num_layers - 1, slots)  # [2, n, Hkv, D]
    engine.admit_prefilled("q", ids, outcome.sample.token_id, params, register_prefix=False)
    tokens = [outcome.sample.token_id]
    while engine.has_unfinished():
        tokens += [t for out in engine.step() for t in out.new_token_ids]
    return outcome.logits, tokens, outcome.computed_rows, last_kv


def compare(full, logits, tokens, kv) -> dict:
    full_logits, full_tokens, full_kv = full
    p, q = full_logits.log_softmax(-1), logits.log_softmax(-1)
    agree = next((i for i, (a, b) in enumerate(zip(full_tokens, tokens)) if a != b), NUM_GREEDY)
    return {"kl": float((p.exp() * (p - q)).sum()), "kv_rel_err": float((kv - full_kv).norm() / full_kv.norm()),
            "top1": float(full_logits.argmax() == logits.argmax()),
            "greedy_match": sum(a == b for a, b in zip(full_tokens, tokens)) / NUM_GREEDY, "first_divergence": agree}


def one_prompt(engine: Engine, item: dict) -> dict:
    ids, spans = document_prompt(engine.tokenizer, [c["text"] for c in item["ctxs"]], item["question"])
    store = ChunkStore(LocalTier(1 << 30))
    loader = ChunkCache(engine, store)
    for s, n in spans:
        store.put(*loader.compute_alone(engine, ids[s:s + n]))
    full_logits, full_tokens, _, full_kv = run_case(engine, store, ids, spans, 1.0, None)
    rows = {"num_tokens": len(ids), "cases": []}
    for ratio in RATIOS:
        for selection, seed in (("hkvd", None), ("random", 0)):
            if ratio in (0.0, 1.0) and selection == "random":
                continue  # nothing is chosen by deviation at r = 0 or 1
            start = time.perf_counter()
            logits, tokens, computed, kv = run_case(engine, store, ids, spans, ratio, seed)
            rows["cases"].append({"ratio": ratio, "selection": selection, "computed_fraction": computed / len(ids),
                                  "time_s": time.perf_counter() - start,
                                  **compare((full_logits, full_tokens, full_kv), logits, tokens, kv)})
    return rows


def summarize(prompts: list[dict]) -> list[dict]:
    keys = sorted({(c["ratio"], c["selection"]) for p in prompts for c in p["cases"]})
    out = []
    for ratio, selection in keys:
        cases = [c for p in prompts for c in p["cases"] if (c["ratio"], c["selection"]) == (ratio, selection)]
        out.append({"ratio": ratio, "selection": selection, **{m: statistics.mean(c[m] for c in cases)
                    for m in ("kl", "kv_rel_err", "top1", "greedy_match", "first_divergence", "computed_fraction",
                              "time_s")}})
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for selection, style in (("hkvd", "o-"), ("random", "s--")):
        rows = [r for r in summary if r["selection"] == selection or r["ratio"] in (0.0, 1.0)]
        rows = sorted({r["ratio"]: r for r in rows}.values(), key=lambda r: r["ratio"])
        axes[0].plot([r["ratio"] for r in rows], [r["kl"] for r in rows], style, label=selection)
        axes[1].plot([r["ratio"] for r in rows], [r["kv_rel_err"] for r in rows], style, label=selection)
        axes[2].plot([r["ratio"] for r in rows], [r["greedy_match"] for r in rows], style, label=selection)
    axes[0].set(xlabel="recompute ratio r", ylabel="last-token KL(full || blend)", yscale="symlog")
    axes[1].set(xlabel="recompute ratio r", ylabel="last-layer KV relative error")
    axes[2].set(xlabel="recompute ratio r", ylabel=f"greedy agreement, first {NUM_GREEDY} tokens", ylim=(0, 1.05))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("CacheBlend on `small` (random weights), MuSiQue: 10 passages + question")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else ensure_model("small")
    engine = Engine(model, EngineConfig(kv_cache_bytes=256 << 20, enable_prefix_caching=False))
    items = json.loads(TRACE.read_text())[:args.prompts]
    start = time.perf_counter()
    prompts = [one_prompt(engine, item) for item in items]
    summary = summarize(prompts)
    result = {"model": model.name, "dtype": "float32", "check_layer": 1, "num_prompts": len(prompts),
              "passages_per_prompt": 10, "greedy_tokens": NUM_GREEDY, "ratios": RATIOS, "summary": summary,
              "prompts": prompts, "wall_s": time.perf_counter() - start, "threads": args.threads}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    plot(summary, RESULTS.with_suffix(".png"))
    for row in summary:
        print(f"r={row['ratio']:<5} {row['selection']:<7} KL={row['kl']:.4g} kv_err={row['kv_rel_err']:.3f} "
              f"top1={row['top1']:.2f} "
              f"greedy={row['greedy_match']:.2f} computed={row['computed_fraction']:.3f}")


if __name__ == "__main__":
    main()
