"""What each blending choice does to answer quality: one change at a time, on a few MuSiQue questions.

Setups, from the one issue 15 measured (plain prompt, each passage computed alone at position 0)
to the benchmark's: the passage computed after the prompt head (an attention sink before it, as
CacheBlend computes chunks after BOS), the chat template, V instead of K deviation (the CacheBlend
prototype), gradual filtering over three check layers, a later check layer. For each: full reuse,
HKVD and random recompute at r = 0.15, scored against that setup's own full prefill
(`chunkcache_quality.score`). Results are rewritten after every question.

    python benchmarks/chunkcache_ablation.py [--model DIR] [--questions 2,0,1] [--passages 4]
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from chunkcache_quality import FULL, load_questions, question_parser, run_case, score

from splitserve.bench.provenance import model_id
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.documents import special_prefix
from splitserve.chunkcache.qa_prompt import qa_prompt
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier

RESULTS = Path(__file__).resolve().parent / "results" / "chunkcache_quality_ablation.json"
RATIO = 0.15


@dataclass(frozen=True)
class Setup:
    name: str
    chat: bool
    sink: bool  # passages computed after the prompt head, not alone at position 0
    check_layers: tuple[int, ...] = (1,)
    ratios: tuple[float, ...] = (RATIO,)
    deviation: str = "k"

    def cases(self) -> dict[str, ChunkCacheConfig]:
        ratio = dict(planning="ratio")
        return {"full_reuse": ChunkCacheConfig(BlendConfig((0,), (0.0,)), **ratio),
                "hkvd": ChunkCacheConfig(BlendConfig(self.check_layers, self.ratios, deviation=self.deviation), **ratio),
                "random": ChunkCacheConfig(BlendConfig(self.check_layers, self.ratios, random_seed=0), **ratio)}


SETUPS = (Setup("plain, passage alone at 0 (issue 15)", chat=False, sink=False),
          Setup("plain, passage after the head", chat=False, sink=True),
          Setup("chat template, passage after the head", chat=True, sink=True),
          Setup("  + V deviation", chat=True, sink=True, deviation="v"),
          Setup("  + gradual filtering (1,2,3: 0.3,0.2,0.15)", chat=True, sink=True, check_layers=(1, 2, 3),
                ratios=(0.3, 0.2, 0.15)),
          Setup("  + check layer 3", chat=True, sink=True, check_layers=(3,)))


def run_setups(engine, item: dict, num_passages: int) -> dict[str, dict]:
    out, prepared = {}, {}
    for setup in SETUPS:
        if (setup.chat, setup.sink) not in prepared:
            qa = qa_prompt(engine.tokenizer, item, setup.chat, num_passages)
            store = ChunkStore(LocalTier(1 << 34))
            ingest = ChunkCache(engine, store, prefix=qa.head if setup.sink else special_prefix(engine.tokenizer))
            for s, n in qa.spans:
                store.put(*ingest.compute_alone(engine, qa.ids[s:s + n]))
            prepared[(setup.chat, setup.sink)] = (qa, store, run_case(engine, store, qa, FULL, reuse=False))
        qa, store, full = prepared[(setup.chat, setup.sink)]
        out[setup.name] = {"full": score(full, full, item["answers"])}
        for name, config in setup.cases().items():
            out[setup.name][name] = score(full, run_case(engine, store, qa, config), item["answers"])
    return out


def summarize(questions: list[dict]) -> dict:
    table = {}
    for setup in SETUPS:
        rows = [q["setups"][setup.name] for q in questions]
        table[setup.name] = {case: {m: statistics.mean(r[case][m] for r in rows) for m in ("f1", "rouge_l", "kl", "top1")}
                             for case in rows[0]}
    return table


def main() -> None:
    args = question_parser(__doc__.splitlines()[0], "2,0,1", RESULTS).parse_args()
    engine, items = load_questions(args)
    start, questions = time.perf_counter(), []
    for i, item in items:
        questions.append({"index": i, "setups": run_setups(engine, item, args.passages)})
        result = {"model": model_id(args.model), "passages_per_question": args.passages, "ratio": RATIO,
                  "num_questions": len(questions), "wall_s": time.perf_counter() - start,
                  "summary": summarize(questions), "questions": questions}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"question {i} done, {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
