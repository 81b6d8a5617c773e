"""Measuring one engine on this machine: prefill steps (whole and chunked prompts) and decode
steps (batch x context), timed around `Engine.step()`, medians over repeats.

Decode batches enter through the decode-only path (`reserve` + `admit_prefilled`), so no
prompt is computed to set them up: the KV in the blocks is whatever the pool held, which
costs the same to attend to.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from splitserve.sim.profile import StepPoint


@dataclass(frozen=True)
class MeasurePlan:
    prefill_tokens: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    repeats: int
    max_num_batched_tokens: int
    max_kv_tokens: int  # the measuring engine's pool (decode batch x context must fit)
    prefill_pairs: tuple[int, ...] = ()  # two fresh prompts of each size in one step (attention per sequence)

    def __post_init__(self):
        if self.repeats < 1 or not self.prefill_tokens or not self.decode_batches or not self.decode_contexts:
            raise ValueError("a measure plan needs repeats >= 1 and at least one size of each kind")


DECODE_STEPS = 11  # 10 timed: their spread is kept too (decode_step_ratios)
QUICK = MeasurePlan((16, 64, 256, 1024), (1, 8, 32), (64, 1024), 2, 2048, 40_000, (256,))
# 384, 640, 768: row counts the packed linears pad to (profile.computed_rows) between 256 and 1024,
# where most prompts fall; 320 and 576 run as 256 + 64 and 512 + 64 rows (a second call, not
# padded): the fit sees the linears at rows between the buckets
# pairs: prompts that arrive together share a step; its attention is two blocks, not one of twice the size
FULL = MeasurePlan((16, 64, 256, 320, 384, 512, 576, 640, 768, 1024, 2048, 4096), (1, 2, 4, 16, 64), (64, 512, 2048), 2,
                   2048, 70_000, (256, 512))


def make_engine(model_dir: str | Path, plan: MeasurePlan, dtype: str = "float32", device: str = "cpu",
                kv_cache_dtype: str = "auto"):
    from splitserve.engine import Engine, EngineConfig

    return Engine(model_dir, EngineConfig(dtype=dtype, kv_cache_dtype=kv_cache_dtype, device=device,
                                          enable_prefix_caching=False,
                                          max_num_seqs=max(plan.decode_batches),
                                          max_num_batched_tokens=plan.max_num_batched_tokens,
                                          num_blocks=-(-plan.max_kv_tokens // 16), max_model_len=0))


def _prompt(engine, n: int, salt: int) -> list[int]:
    vocab = engine.model_config.vocab_size
    return [(salt * 7919 + i * 31) % (vocab - 1) + 1 for i in range(n)]


def _timed_step(engine) -> float:
    start = time.perf_counter()
    engine.step()
    return time.perf_counter() - start


def prefill_points(engine, plan: MeasurePlan) -> list[StepPoint]:
    """Each prompt as one request; every step of it (chunks of at most the budget) is a point. Then
    each pair size: two prompts added together, one step."""
    from splitserve.engine import SamplingParams

    points = []
    budget = plan.max_num_batched_tokens
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    for n in plan.prefill_tokens:
        if n + 1 > engine.max_model_len:
            continue
        for r in range(plan.repeats):
            engine.add_request(_prompt(engine, n, r), params)
            start = 0
            while engine.has_unfinished():
                chunk = min(budget, n - start)
                attention = chunk * (start + chunk)
                points.append(StepPoint(chunk, 1, attention, _timed_step(engine), "prefill",
                                        masked_attention=attention if start else 0.0))
                start += chunk
    for n in plan.prefill_pairs:
        if 2 * n > budget or n + 1 > engine.max_model_len:
            continue
        for r in range(plan.repeats):
            for i in range(2):
                engine.add_request(_prompt(engine, n, 1000 + 2 * r + i), params)
            points.append(StepPoint(2 * n, 2, 2 * n * n, _timed_step(engine), "prefill"))
            while engine.has_unfinished():
                engine.step()
    return points


def decode_points(engine, plan: MeasurePlan, ratios: list[float] | None = None) -> list[StepPoint]:
    """A batch of `b` requests at context `c`, decoding: median of DECODE_STEPS - 1 steps after one warm-up.
    `ratios` (when given) gets every timed step's time / its shape's median: the steps' spread."""
    points = []
    for c in plan.decode_contexts:
        for b in plan.decode_batches:
            if b * (c + DECODE_STEPS + 2) > plan.max_kv_tokens or c + DECODE_STEPS + 2 > engine.max_model_len:
                continue
            _admit_batch(engine, b, c)
            engine.step()  # warm-up at this shape
            times = [_timed_step(engine) for _ in range(DECODE_STEPS - 1)]
            for rid in list(engine.requests):
                engine.abort(rid)
            while engine.has_unfinished():
                engine.step()
            median = statistics.median(times)
            points.append(StepPoint(b, b, 0.0, median, "decode", b * (c + 3)))
            if ratios is not None:
                ratios.extend(t / median for t in times)
    return points


def _admit_batch(engine, batch: int, context: int) -> None:
    from splitserve.engine import SamplingParams

    params = SamplingParams(max_tokens=DECODE_STEPS + 2, ignore_eos=True)
    for i in range(batch):
        rid = f"decode-{batch}-{context}-{i}"
        if engine.reserve(rid, context) is None:
            raise RuntimeError(f"the measuring pool cannot hold {batch} x {context} tokens")
        engine.admit_prefilled(rid, _prompt(engine, context, i), 1, params)


def warm_up(engine) -> None:
    from splitserve.engine import SamplingParams

    engine.generate([_prompt(engine, 32, 99)], SamplingParams(max_tokens=4, ignore_eos=True))
