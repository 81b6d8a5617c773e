"""Where a decode step's time goes on a real model: engine step vs model vs linears, and a torch.profiler table.

Prefills `batch` requests of `--prompt` tokens, then times `engine.step()` for decode steps
(medians) and profiles a few with torch.profiler (ops by self CPU time).

    python benchmarks/decode_profile.py [--model DIR] [--threads 1] [--batch 1 8] [--steps 21] [--profile]
        [--ab-attention] [--clocks]

--clocks splits each step's wall time into the linears, the attention and the rest with plain clocks
around them (torch.profiler inflates short custom ops: it read the batch-8 head at 7.5 ms against 4.6
ms by a clock). --ab-attention alternates, step by step in the same process, the native decode attention and torch's
SDPA over gathered keys (where the native kernels build), and reports both medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from splitserve.engine import Engine, EngineConfig, SamplingParams

MODEL = ".cache/models/smollm2-135m-instruct-s0-v1"


def engine_for(model_dir: str) -> Engine:
    return Engine(model_dir, EngineConfig(kv_cache_bytes=1 << 29, max_num_batched_tokens=8192, max_num_seqs=64,
                                          enable_prefix_caching=False))


def start_batch(engine: Engine, batch: int, prompt: int, steps: int) -> None:
    params = SamplingParams(max_tokens=steps + 8, ignore_eos=True)
    for b in range(batch):
        engine.add_request([(17 * b + 31 * i) % 1000 + 10 for i in range(prompt)], params)
    engine.step()  # the prefill


def step_ms(engine: Engine, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def install_clocks(engine: Engine) -> dict[str, float]:
    """Wraps every PackedLinear and the model's paged_attention in a clock; returns the running seconds."""
    from splitserve.engine import model as model_module
    from splitserve.engine.cpu_linear import PackedLinear

    clocks: dict[str, float] = {}

    def timed(name, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            clocks[name] = clocks.get(name, 0.0) + time.perf_counter() - start
            return out
        return call

    for module in engine.model.modules():
        if isinstance(module, PackedLinear):
            module.forward = timed("linears", module.forward)
    model_module.paged_attention = timed("attention", model_module.paged_attention)
    return clocks


def split(clocks: dict[str, float] | None, times: list[float]) -> str:
    if clocks is None:
        return ""
    mean_ms = sum(times) / len(times)
    parts = {name: clocks.get(name, 0.0) * 1e3 / len(times) for name in ("linears", "attention")}
    return (f"; mean {mean_ms:.2f} ms = linears {parts['linears']:.2f} + attention {parts['attention']:.2f}"
            f" + rest {mean_ms - sum(parts.values()):.2f}")


def ab_attention(engine: Engine, steps: int) -> str:
    native = engine.runner.native_decode
    times: dict[bool, list[float]] = {True: [], False: []}
    for step in range(2 * steps):
        engine.runner.native_decode = native and step % 2 == 0
        times[engine.runner.native_decode] += step_ms(engine, 1)
    engine.runner.native_decode = native
    return "; ".join(f"{name} step median {statistics.median(times[flag]):.2f} ms"
                     for name, flag in (("native attention", True), ("SDPA", False)) if times[flag])


def profile(engine: Engine, steps: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--ab-attention", action="store_true", help="native decode attention vs SDPA, alternating")
    parser.add_argument("--clocks", action="store_true", help="linears / attention / rest per step, by clocks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = engine_for(args.model)
    clocks = install_clocks(engine) if args.clocks else None
    for batch in args.batch:
        start_batch(engine, batch, args.prompt, 2 * args.steps + 10)
        step_ms(engine, 3)
        if args.ab_attention:
            print(f"threads {args.threads} batch {batch}: " + ab_attention(engine, args.steps), flush=True)
        else:
            if clocks is not None:
                clocks.clear()
            times = step_ms(engine, args.steps)
            print(f"threads {args.threads} batch {batch}: step median {statistics.median(times):.2f} ms "
                  f"(min {min(times):.2f}, max {max(times):.2f})" + split(clocks, times), flush=True)
        if args.profile:
            profile(engine, 5, args.rows)
        for rid in list(engine.requests):
            engine.abort(rid)


if __name__ == "__main__":
    main()
