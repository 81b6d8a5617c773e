"""The native decode attention against the same kernel at another commit, side by side in one process.

The kernel (`splitserve/engine/csrc/decode_attention.cpp`) is timed over SmolLM2-135M's geometry: 30
layers of 9 query heads, 3 KV heads and 64 dims, blocks of 16 tokens, each layer's pools holding
4,096 blocks and each request's blocks drawn at random from them, as a serving node's cache is after
a while. The baseline is the kernel's source at `--baseline` (a git revision), compiled like the
current one but registered as `splitserve_attention_baseline`. Each repeat times one 30-layer step
with each kernel in turn; the medians are reported, with the largest difference between the two
kernels' outputs.

    python benchmarks/decode_attention_kernel.py --baseline fd9ec49 [--threads 2] [--repeats 15]
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

from splitserve.bench.provenance import REPO_ROOT, portable_args
from splitserve.engine import native

RESULTS = Path(__file__).parent / "results" / "decode_attention_kernel.json"
LAYERS, HEADS, KV_HEADS, HEAD_DIM, BLOCK, POOL_BLOCKS = 30, 9, 3, 64, 16, 4096
CASES = ((1, 600), (8, 530), (32, 600), (8, 80))  # (requests, keys each)


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
    command = native._compile_command(library)
    first_source = command.index(str(native.SOURCES[0]))  # the sources come before the libraries
    command[first_source:first_source + len(native.SOURCES)] = [str(workdir / "decode_attention.cpp")]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=native.BUILD_TIMEOUT_S)
    torch.ops.load_library(str(library))
    return torch.ops.splitserve_attention_baseline


def step_ms(op, q, pools, tables, positions) -> float:
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
            times[name].append(step_ms(op, q, pools, tables, positions))
    first, *others = outputs.values()
    return {"requests": requests, "keys": keys,
            "step_ms": {name: statistics.median(values) for name, values in times.items()},
            "max_abs_difference": max((float((out - first).abs().max()) for out in others), default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision whose kernel to compare against")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    report = {"benchmark": "decode_attention_kernel", "config": portable_args(vars(args)), "commit": commit,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
              "geometry": {"layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM,
                           "block_size": BLOCK, "pool_blocks": POOL_BLOCKS},
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "cases": cases,
              "method": __doc__.split("\n\n")[1].replace("\n", " ")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
