"""The native decode attention against the same kernel at another commit, side by side in one process.

The kernel (`splitserve/engine/csrc/decode_attention.cpp`) is timed over SmolLM2-135M's geometry: 30
layers of 9 query heads, 3 KV heads and 64 dims, blocks of 16 tokens, each layer's pools holding
4,096 blocks and each request's blocks drawn at random from them, as a serving node's cache is after
a while. The baseline is the kernel's source at `--baseline` (a git revision), compiled like the
current one but registered as `splitserve_attention_baseline`. Each repeat times one 30-layer step
with each kernel in turn; the medians are reported, with the largest difference between the two
kernels' outputs.

With `--engine-model DIR`, the two kernels also run inside the engine: a batch is prefilled, then
its decode steps (`engine.step()`) alternate between the kernels, one step each, and the medians of
the step times are reported. A fresh engine's blocks are still in order, so this understates what
a long-running node's scattered blocks gain.

    python benchmarks/decode_attention_kernel.py --baseline fd9ec49 [--threads 2] [--repeats 15] \
        [--engine-model .cache/models/smollm2-135m-instruct-s0-v1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from splitserve.bench.provenance import REPO_ROOT, model_id, portable_args
from splitserve.engine import native

RESULTS = Path(__file__).parent / "results" / "decode_attention_kernel.json"
LAYERS, HEADS, KV_HEADS, HEAD_DIM, BLOCK, POOL_BLOCKS = 30, 9, 3, 64, 16, 4096
CASES = ((1, 600), (8, 530), (32, 600), (8, 80))  # (requests, keys each)
ENGINE_CASES = ((1, 600), (8, 512), (16, 512))  # (requests, prompt tokens): within engine_for's 512 MB of KV
ENGINE_STEPS = 20  # decode steps with each kernel


def baseline_ops(revision: str, workdir: Path):
    """torch.ops.splitserve_attention_baseline: the kernel as it was at `revision`."""
    for path in native.HEADERS + (native.CSRC / "decode_attention.cpp",):
        relative = path.relative_to(REPO_ROOT).as_posix()
        source = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=REPO_ROOT, check=True,
                                capture_output=True, text=True).stdout
        if path.name == "decode_attention.cpp":
            source = source.replace("TORCH_LIBRARY(splitserve_attention,", "TORCH_LIBRARY(splitserve_attention_baseline,")
        (workdir / path.name).write_text(source)
    library = workdir / "baseline.so"
    command = native._compile_command(library, sources=(workdir / "decode_attention.cpp",))
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=native.BUILD_TIMEOUT_S)
    torch.ops.load_library(str(library))
    return torch.ops.splitserve_attention_baseline


def kernel_step_ms(op, q, pools, tables, positions) -> float:
    start = time.perf_counter()
    for k, v in pools:
        op.paged_decode_attention(q, k, v, tables, positions, 0, HEAD_DIM ** -0.5)
    return (time.perf_counter() - start) * 1e3


def run_case(kernels: dict, pools, requests: int, keys: int, repeats: int) -> dict:
    width = (keys + BLOCK - 1) // BLOCK
    tables = torch.randperm(POOL_BLOCKS)[: requests * width].view(requests, width).contiguous()
    positions = torch.full((requests,), keys - 1, dtype=torch.long)
    q = torch.randn(requests, HEADS, HEAD_DIM)
    outputs = {name: op.paged_decode_attention(q, *pools[0], tables, positions, 0, HEAD_DIM ** -0.5)
               for name, op in kernels.items()}
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(repeats):
        for name, op in kernels.items():
            times[name].append(kernel_step_ms(op, q, pools, tables, positions))
    first, *others = outputs.values()
    return {"requests": requests, "keys": keys,
            "step_ms": {name: statistics.median(values) for name, values in times.items()},
            "max_abs_difference": max((float((out - first).abs().max()) for out in others), default=0.0)}


def engine_steps(kernels: dict, model_dir: Path) -> list[dict]:
    """Decode step medians with each kernel, alternating step by step in one engine."""
    from decode_profile import engine_for, start_batch, step_ms

    engine = engine_for(str(model_dir))
    current = native.attention_ops
    cases = []
    try:
        for requests, prompt in ENGINE_CASES:
            start_batch(engine, requests, prompt, 2 * ENGINE_STEPS * len(kernels) + 4)
            step_ms(engine, 2)
            times: dict[str, list[float]] = {name: [] for name in kernels}
            for _ in range(ENGINE_STEPS):
                for name, op in kernels.items():
                    native.attention_ops = lambda op=op: op
                    times[name] += step_ms(engine, 1)
            native.attention_ops = current
            while engine.has_unfinished():
                engine.step()
            cases.append({"requests": requests, "prompt_tokens": prompt,
                          "step_ms": {name: statistics.median(values) for name, values in times.items()}})
            print(json.dumps(cases[-1]), flush=True)
    finally:
        native.attention_ops = current
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision whose kernel to compare against")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--engine-model", type=Path, default=None, help="also alternate the kernels inside an engine on this model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if native.attention_ops() is None:
        raise SystemExit("the native kernels are unavailable on this machine (see the log line above)")
    torch.manual_seed(0)
    pools = [(torch.randn(POOL_BLOCKS, BLOCK, KV_HEADS, HEAD_DIM), torch.randn(POOL_BLOCKS, BLOCK, KV_HEADS, HEAD_DIM))
             for _ in range(LAYERS)]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        kernels = {"baseline": baseline_ops(args.baseline, Path(workdir)), "current": native.attention_ops()}
        cases = []
        for requests, keys in CASES:
            cases.append(run_case(kernels, pools, requests, keys, args.repeats))
            print(json.dumps(cases[-1]), flush=True)
        engine = engine_steps(kernels, args.engine_model) if args.engine_model else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    report = {"benchmark": "decode_attention_kernel", "config": portable_args(vars(args)), "commit": commit,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
              "geometry": {"layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM,
                           "block_size": BLOCK, "pool_blocks": POOL_BLOCKS},
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "cases": cases,
              "engine_model": model_id(args.engine_model) if args.engine_model else None, "engine_cases": engine,
              "method": __doc__.split("\n\n")[1].replace("\n", " ")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
