"""How close to full prefill can any row selection get (issue 15)? An oracle against the real ones.

Prompts as chunkcache_quality.py (chat template, passages computed alone after the head). Full
prefill's own K/V at every layer is known here, so the rows reuse gets most wrong are known too:

    oracle_R     the R of cached rows with the largest true KV error, summed over all layers:
                 sum_l |K_full - K_reused|^2 / mean |K_full|^2 + the same for V (relative per layer);
                 error_share: the part of that error (over cached rows) in the rows a case recomputes
    hkvd_R       CacheBlend's choice (layer-1 K deviation), attn_R the query-aware one
                 (layer-1 attention from the forced rows), for comparison at the same count
    full_reuse   r = 0

Every case recomputes layer 0 in full and the chosen rows from layer 1 on (check layer 1), scored by
the first token only: KL(full || case), top-1. If the oracle at r = 0.15 stays far above the KL of
about 0.015 that ROUGE-L 0.8 needs (chunkcache_noise.py), no signal that picks rows can reach it.

    nice -n 19 python benchmarks/chunkcache_oracle.py --questions 0,27 [--passages 4]
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from chunkcache_common import run_questions
from chunkcache_quality import load_questions, passages_stored, question_parser

from splitserve.chunkcache.blend import BlendConfig, blended_prefill
from splitserve.chunkcache.qa_prompt import qa_prompt
from splitserve.chunkcache.quality import first_token_scores
from splitserve.chunkcache.reuse import place_chunks
from splitserve.chunkcache.runner import ChunkCache
from splitserve.chunkcache.selection import hkvd_count

RESULTS = Path(__file__).resolve().parent / "results" / "chunkcache_oracle.json"
ORACLE_RATIOS = (0.15, 0.3, 0.5)


def true_error(full_kv: dict, reused) -> torch.Tensor:
    """-> [n] each row's KV error against full prefill, summed over layers (relative per layer)."""
    err = torch.zeros(reused.valid.shape[0])
    for i, (k, v) in full_kv.items():
        k_old, v_old = reused.layer(i)
        for fresh, old in ((k, k_old), (v, v_old)):
            err += (fresh - old).pow(2).sum(dim=(1, 2)) / fresh.pow(2).sum(dim=(1, 2)).mean()
    return err


@torch.inference_mode()
def one_question(engine, item: dict, num_passages: int) -> dict:
    qa = qa_prompt(engine.tokenizer, item, True, num_passages)
    store = passages_stored(engine, qa)
    cache = ChunkCache(engine, store, prefix=qa.head)
    cfg, model, n = engine.model_config, engine.model, len(qa.ids)
    ids = torch.tensor(qa.ids)
    shape = (cfg.num_kv_heads, cfg.head_dim)
    reused = place_chunks(cache.plan(qa.ids, qa.spans).placed, n, cache.shifter, shape, torch.float32)
    full_kv = {}
    none = place_chunks([], n, cache.shifter, shape, torch.float32)
    full = blended_prefill(model, ids, none, BlendConfig((1,), (1.0,)),
                           on_layer=lambda i, k, v: full_kv.update({i: (k.clone(), v.clone())}))
    candidate = reused.valid.clone()
    candidate[n - 1] = False
    err = true_error(full_kv, reused).masked_fill(~candidate, 0.0)
    del full_kv
    cases = {"full_reuse": (BlendConfig((1,), (0.0,)), None)}
    for r in ORACLE_RATIOS:
        count = hkvd_count(r, int(candidate.sum()))
        cases[f"oracle_{r}"] = (BlendConfig((1,), (0.0,)), torch.zeros(n, dtype=torch.bool).index_fill_(
            0, err.topk(count).indices, True))
        cases[f"hkvd_{r}"] = (BlendConfig((1,), (r,)), None)
    cases["attn_0.15"] = (BlendConfig((1,), (0.15,), deviation="attn"), None)
    out = {"num_tokens": n, "cases": {}}
    for name, (blend, forced) in cases.items():
        res = blended_prefill(model, ids, reused, blend, forced=forced)
        chosen = torch.zeros(n, dtype=torch.bool).index_fill_(0, res.selected, True) & candidate
        out["cases"][name] = {**first_token_scores(full.logits, res.logits), "computed_fraction": res.computed_rows / n,
                              "error_share": float(err[chosen].sum() / err.sum())}  # of the true KV error, rows it fixed
    return out


def summarize(questions: dict) -> dict:
    rows = list(questions.values())
    names = [n for n in rows[0]["cases"] if all(n in q["cases"] for q in rows)]
    return {n: {m: statistics.mean(q["cases"][n][m] for q in rows if m in q["cases"][n])
                for m in ("kl", "top1", "computed_fraction", "error_share")} for n in names}


def main() -> None:
    args = question_parser(__doc__.splitlines()[0], "0,27", RESULTS).parse_args()
    run_questions(args, *load_questions(args), one_question, summarize, oracle_ratios=ORACLE_RATIOS)


if __name__ == "__main__":
    main()
