"""What the chunk-cache benchmarks share: an engine for a preset or folder, and a blended prefill
decoded greedily in the engine from the KV it wrote (how a mixed node serves a blended request)."""

from __future__ import annotations

from pathlib import Path

import torch

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
