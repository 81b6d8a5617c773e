"""What the chunk-cache benchmarks share: an engine for a preset or folder, and a blended prefill
decoded greedily in the engine from the KV it wrote (how a mixed node serves a blended request)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from splitserve.bench.provenance import model_id
from splitserve.chunkcache.runner import BlendOutcome, ChunkCache, RequestPlan
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.modelgen import ensure_model


def load_engine(model: str, threads: int, kv_cache_bytes: int = 256 << 20) -> tuple[Path, Engine]:
    """model: a preset name or a model folder -> (its folder, an engine without prefix caching)."""
    torch.set_num_threads(threads)
    path = Path(model) if Path(model).exists() else ensure_model(model)
    return path, Engine(path, EngineConfig(kv_cache_bytes=kv_cache_bytes, enable_prefix_caching=False))


def blend_and_decode(engine: Engine, cache: ChunkCache, ids: list[int], plan: RequestPlan, params: SamplingParams,
                     on_layer=None) -> tuple[list[int], BlendOutcome]:
    """-> the answer's token ids (first one from the blend) and the blend's outcome."""
    outcome = cache.blend(engine, "r", ids, plan, params, 0, on_layer=on_layer)
    if outcome is None:
        raise SystemExit("the engine has no room for the prompt's KV (raise the KV budget)")
    engine.admit_prefilled("r", ids, outcome.sample.token_id, params, register_prefix=False)
    tokens = [outcome.sample.token_id]
    while engine.has_unfinished():
        tokens += [t for out in engine.step() for t in out.new_token_ids]
    return tokens, outcome


def parse_indices(text: str) -> list[int]:
    """'0-23,25' -> [0, ..., 23, 25]."""
    out = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def run_questions(args, engine: Engine, items: list[tuple[int, dict]], one, summarize, **meta) -> dict:
    """one(engine, item, passages) per question; the results so far are rewritten to args.out after each."""
    questions, start = {}, time.perf_counter()
    for i, item in items:
        questions[i] = one(engine, item, args.passages)
        args.out.write_text(json.dumps({"model": model_id(args.model), "passages": args.passages, **meta,
                                        "threads": args.threads, "wall_s": time.perf_counter() - start,
                                        "summary": summarize(questions), "questions": questions}, indent=1))
        print(f"question {i} done", flush=True)
    return questions


def pick_cases(names: str, known: dict) -> dict:
    """'a,b' -> {name: known[name]}; an unknown name exits listing the known ones."""
    unknown = sorted(set(names.split(",")) - set(known))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {', '.join(known)}")
    return {name: known[name] for name in names.split(",")}


def merged(paths: list[Path], questions_of, summarize) -> dict:
    """Result files of processes over disjoint questions -> one result (questions_of: the runs -> their questions)."""
    runs = [json.loads(p.read_text()) for p in paths]
    questions = questions_of(runs)
    return {**runs[0], "wall_s": sum(r["wall_s"] for r in runs), "merged_from": [p.name for p in paths],
            "summary": summarize(questions), "questions": questions}
