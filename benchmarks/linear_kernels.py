"""Which fp32 CPU kernel is fastest for a model's linears at each row count (cpu_linear.py's choice).

Times every linear of one decode step of SmolLM2-135M's shapes (30 layers of qkv 960x576, o
576x576, gate_up 3072x576, down 576x1536, random weights) and its lm_head (49152x576) with
F.linear over [out, in], `torch.mv` over [out, in] (one row), `x @ w_t` over the weight stored [in, out], and oneDNN over the packed
weight; medians of a few runs, milliseconds per step. The random weights are made Q4_1 (layers) and
Q8_0 (head) exact, as SmolLM2's GGUF's are, so that `blocks` (native.py's kernels over those
blocks, where they build: `dot` and `panel`) computes the same linears.

    python benchmarks/linear_kernels.py [--threads 1] [--rows 1 2 4 8 16 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from splitserve.engine import cpu_linear
from splitserve.engine.cpu_linear import PACK_FOR_ROWS
from splitserve.engine.quant_weights import find_blocks, gguf_round_trip

LAYER = ((960, 576), (576, 576), (3072, 576), (576, 1536))
HEAD = (49152, 576)


def median_ms(fn, repeats: int = 9) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def kernels(weights: list[torch.Tensor]) -> dict:
    """name -> (weights prepared for it, the call)."""
    pointwise = torch.ops.mkldnn._linear_pointwise
    return {"F.linear": (weights, F.linear),
            "x @ w_t": ([w.t().contiguous() for w in weights], torch.mm),
            "mv": (weights, lambda x, w: torch.mv(w, x[0])),  # one row only: gemv over [out, in]
            "packed": ([torch.ops.mkldnn._reorder_linear_weight(w, PACK_FOR_ROWS) for w in weights],
                       lambda x, p: pointwise(x, p, None, "none", [], ""))} | block_kernel(weights)


def block_kernel(weights: list[torch.Tensor]) -> dict:
    """cpu_linear's kernels over the weights' blocks: `dot` (few rows) and `panel` (more), where they build."""
    kernels_per_weight = [cpu_linear.block_kernels(find_blocks(w)) for w in weights]
    if len(kernels_per_weight[0]) < 2:
        return {}
    call = lambda x, kernel: kernel(x)  # noqa: E731
    return {name: ([ks[i] for ks in kernels_per_weight], call) for i, name in enumerate(("dot", "panel"))}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layers = kernels([gguf_round_trip(torch.randn(o, i) * 0.05, "q4_1") for o, i in LAYER * 30])
    head = kernels([gguf_round_trip(torch.randn(*HEAD) * 0.05, "q8_0")])
    for rows in args.rows:
        cells = []
        for name in [n for n in layers if rows == 1 or n != "mv"]:
            (ws, call), (hw, hcall) = layers[name], head[name]
            xs = [torch.randn(rows, in_features) for _, in_features in LAYER * 30]
            h = torch.randn(rows, HEAD[1])
            cells.append(f"{name} {median_ms(lambda: [call(x, w) for x, w in zip(xs, ws)]):.1f}"
                         f" + head {median_ms(lambda: hcall(h, hw[0])):.1f}")
        print(f"threads {args.threads}, rows {rows}: " + ";  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
