"""A transform for CPU fp32: every nn.Linear becomes a oneDNN linear over a weight packed once.

Measured on this project's 2-core CPU (3072x512 fp32 weight, out of cache): 2.6x faster than
nn.Linear at 1 row, 2.3x at 8 rows, 2x at 32 rows, 1.2x at 512 rows. Outputs differ from
nn.Linear only by fp32 rounding (a different summation order). The packing is tuned for a
row count; 16 was the best compromise over 1-32 rows on the `small` model's shapes.

oneDNN keeps memory for every input row count it has seen (measured with torch 2.13: ~0.3 MB
per linear per new count, never given back), so a server that saw every prompt length up to
its token budget would grow by gigabytes. Inputs are therefore padded to a bounded set of row
counts (`bucket_rows`: exact up to 16 - decode batches - then multiples of 16 up to 256, then
of 128): rows are independent, the padding rows are dropped, and the extra rows cost little
where a linear is bound by reading its weight. Past 256 rows a few rows over a multiple of 128 would
pad to a whole 128 more (a 512-token prompt with its BOS: 513 rows run as 640), so they run as a
second call instead (`row_calls`): 513 rows as 512 + 1 took 453 ms against 535 ms padded (`small`, 1
thread, one prefill), with the same outputs; with more than SPLIT_MAX_REMAINDER rows over, the second
call's own weight read costs about what the padding does (600 rows: 555 vs 549 ms), so they pad.

A single row (batch-1 decode) with one torch thread goes to MKL's gemm over the weight stored
transposed, [in, out] (`x @ w_t`: it streams the weight row by row instead of taking one dot
product per output): on SmolLM2-135M's linears 1.36x faster than the packed path's and F.linear's
best (33.8 vs 41.1 / 45.9 ms per step, lm_head included). With two threads the packed path is the
fastest even for one row (26.8 ms against 33.0 for `x @ w_t` and 45.2 for F.linear: MKL does not
split a one-row gemm over threads), and from 2 rows up it is the fastest at any thread count
(measured 1-32 rows, 1 and 2 threads: `benchmarks/linear_kernels.py`). The transposed weight is a
copy kept beside the packed one (a tied lm_head's copy is extra memory: 113 MB on SmolLM2-135M).

Weights that are exactly GGML Q4_1 or Q8_0 blocks (a model converted from a quantized GGUF, like
SmolLM2-135M-Instruct: quant_weights.py) also keep those blocks, and up to QUANT_MAX_ROWS rows go
through native.py's kernels over them: the same function from a sixth of the bytes, decoded to
the fp32 weights in registers. On SmolLM2's 121 linears, 2 threads, medians of 7, alternating with
the packed path (quiet machine): 1 row 8.3-10.3 ms against 28.7-29.9 ms, 4 rows 13.3-13.6 against
36.6-40.5, 8 rows 25.5-28.5 against 40.3-48.9, 16 rows 47-68 against 60-79, 24 rows about even,
32 rows 0.86x (so the packed path from 17 rows up). One thread: 1 row 19 against 42 ms.
`benchmarks/linear_kernels.py` times them all (`blocks`).
"""

from __future__ import annotations

import torch
from torch import nn

from splitserve.engine import native
from splitserve.engine.quant_weights import QuantBlocks, find_blocks
from splitserve.rowcounts import SPLIT_MAX_REMAINDER, bucket_rows, computed_rows, row_calls  # noqa: F401 (re-exported)

PACK_FOR_ROWS = 16
QUANT_MAX_ROWS = 16


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, blocks: QuantBlocks | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_FOR_ROWS))
        self.quant_op = kernel_for(blocks)
        self.blocks = blocks if self.quant_op is not None else None  # no kernels here: no use for them
        self.quant_weight = () if self.blocks is None else kernel_arguments(self.blocks)
        if self.quant_op is None:  # [in, out]; the blocks serve one row better
            self.register_buffer("weight_t", linear.weight.detach().t().contiguous(), persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.quant_op is not None and rows.shape[0] <= QUANT_MAX_ROWS:
            return self._quantized(rows).view(*x.shape[:-1], self.out_features)
        if x.numel() == self.in_features and torch.get_num_threads() == 1:
            return self._one_row(x)
        calls = row_calls(rows.shape[0])
        out = self._packed(rows) if len(calls) == 1 else torch.cat([self._packed(part) for part in rows.split(calls)])
        return out.view(*x.shape[:-1], self.out_features)

    def _packed(self, rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        padded = bucket_rows(count)
        if padded != count:
            rows = torch.nn.functional.pad(rows, (0, 0, 0, padded - count))
        out = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), self.packed_weight, self.bias, "none", [], "")
        return out[:count]

    def _quantized(self, rows: torch.Tensor) -> torch.Tensor:
        out = self.quant_op(rows.contiguous(), *self.quant_weight)
        return out if self.bias is None else out + self.bias

    def _one_row(self, x: torch.Tensor) -> torch.Tensor:
        row = x.reshape(1, self.in_features)
        out = row @ self.weight_t if self.bias is None else torch.addmm(self.bias, row, self.weight_t)
        return out.view(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module, quantized: bool = True) -> int:
    """Replaces fp32 CPU nn.Linear modules in place; returns how many were replaced.

    quantized: also keep the exact Q4_1/Q8_0 blocks of weights that have them (see above)."""
    if not available():
        return 0
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear) and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu"]
    blocks = {id(child): find_blocks(child.weight) for _, _, child in targets} if quantized else {}
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child, blocks.get(id(child))))
    return len(targets)


def kernel_arguments(blocks: QuantBlocks) -> tuple[torch.Tensor, ...]:
    """The weight's arguments to its kernel: (qs, d, m) for Q4_1, (qs, d) for Q8_0."""
    return (blocks.qs, blocks.d) if blocks.m is None else (blocks.qs, blocks.d, blocks.m)


def kernel_for(blocks: QuantBlocks | None):
    """The native kernel for these blocks, or None (no blocks, or no kernels on this machine)."""
    ops = native.quant_ops() if blocks is not None else None
    if ops is None:
        return None
    return ops.q4_1_linear if blocks.kind == "q4_1" else ops.q8_0_linear
