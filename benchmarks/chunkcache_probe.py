"""First-token KL of blending variants on one question (no decoding): a quick look at one prompt.

The question's passages are computed alone after the chat head; each variant blends the prompt
and is compared with its full prefill by KL(full || variant) and top-1 agreement. Used to find
out why HKVD recompute did not help on question 2 (issue 15): several random seeds, V vs K
deviation, EPIC's recomputed first rows per passage, later check layers.

    python benchmarks/chunkcache_probe.py [--model DIR] [--question 2] [--passages 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from chunkcache_quality import load_engine

from splitserve.bench import traces
from splitserve.bench.provenance import model_id
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.qa_prompt import qa_prompt
from splitserve.chunkcache.quality import first_token_scores
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.modelgen import ensure_model

RESULTS = Path(__file__).resolve().parent / "results" / "chunkcache_quality_probe.json"
VARIANTS = {
    "full_reuse": BlendConfig((0,), (0.0,)),
    "full_reuse + first 16 rows per passage": BlendConfig((0,), (0.0,), lead_rows=16),
    "hkvd K r=0.15": BlendConfig((1,), (0.15,)),
    "hkvd K r=0.15 + first 16 rows": BlendConfig((1,), (0.15,), lead_rows=16),
    "hkvd V r=0.15": BlendConfig((1,), (0.15,), deviation="v"),
    "hkvd K r=0.15, check layer 2": BlendConfig((2,), (0.15,)),
    "hkvd V gradual (1,2,3: 0.3,0.2,0.15)": BlendConfig((1, 2, 3), (0.3, 0.2, 0.15), deviation="v"),
    **{f"random r=0.15 seed {s}": BlendConfig((1,), (0.15,), random_seed=s) for s in range(3)},
    "hkvd K r=0.3": BlendConfig((1,), (0.3,)),
    "random r=0.3 seed 0": BlendConfig((1,), (0.3,), random_seed=0),
}


def first_token_logits(engine, store: ChunkStore, qa, config: BlendConfig, reuse: bool = True):
    cache = ChunkCache(engine, store, ChunkCacheConfig(config, planning="ratio"), prefix=qa.head)
    result = cache._blend(engine, qa.ids, cache.plan(qa.ids, qa.spans if reuse else []), lambda *_: None)
    return result.logits, result.computed_rows / len(qa.ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the smollm2-135m-instruct preset")
    parser.add_argument("--question", type=int, default=2)
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    item = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())[args.question]
    args.model = args.model or ensure_model("smollm2-135m-instruct")
    engine = load_engine(args.model, [item], args.passages)
    qa = qa_prompt(engine.tokenizer, item, True, args.passages)
    store = ChunkStore(LocalTier(1 << 34))
    ingest = ChunkCache(engine, store, prefix=qa.head)
    for s, n in qa.spans:
        store.put(*ingest.compute_alone(engine, qa.ids[s:s + n]))
    full, _ = first_token_logits(engine, store, qa, BlendConfig((1,), (1.0,)), reuse=False)
    rows = {}
    for name, config in VARIANTS.items():
        start = time.perf_counter()
        logits, computed = first_token_logits(engine, store, qa, config)
        rows[name] = {**first_token_scores(full, logits), "computed_fraction": computed,
                      "time_s": time.perf_counter() - start}
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
        args.out.write_text(json.dumps({"model": model_id(args.model), "question": args.question,
                                        "passages": args.passages, "num_tokens": len(qa.ids), "variants": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
