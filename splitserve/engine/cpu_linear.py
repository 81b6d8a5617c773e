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
SmolLM2-135M-Instruct: quant_weights.py) also keep those blocks, and native.py's kernels run over
them: the same function from a sixth of the bytes, each block decoded back to the fp32 weights. Up
to DOT_MAX_ROWS rows the dot kernels decode a block in registers per 4 rows; from there up to
PANEL_MAX_ROWS the panel kernels decode 16 output features once into an fp32 panel in L1 and run a
register-tiled GEMM over it (the weights again, in groups of 16 features); beyond, the packed fp32
path. On SmolLM2's 121 linears, 2 threads (`benchmarks/linear_kernels.py`, ms per step, layers +
head, one run on a quiet machine): 1 row dot 12.4 + 5.2 against packed 23.6 + 4.6; 4 rows dot 12.1
+ 1.9, panel 15.4 + 3.7; 6 rows panel 14.1 + 3.1 against dot 17.0 + 3.2 and packed 25.7 + 5.4; 8
rows panel 18.5-21.0 + 4.2-5.6, dot 21.0-27.2 + 3.7, packed 29.3-30.8 + 5.7-6.8; 32 rows panel 63.3 +
17.0 against packed 72.4 + 21.1; 128 rows 195.4 + 44.7 against 239.1 + 62.5; 256 rows 387.7 + 124.6
against 359.4 + 120.5. A weight whose output features are not a multiple of 16 has no panel
layout: the dot kernels take it up to DOT_ONLY_MAX_ROWS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from splitserve.engine import native
from splitserve.engine.quant_weights import QuantBlocks, by_groups, find_blocks
from splitserve.rowcounts import SPLIT_MAX_REMAINDER, bucket_rows, computed_rows, row_calls  # noqa: F401 (re-exported)

PACK_FOR_ROWS = 16
DOT_MAX_ROWS = 4
PANEL_MAX_ROWS = 128
DOT_ONLY_MAX_ROWS = 16


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, blocks: QuantBlocks | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_FOR_ROWS))
        self.block_kernels = block_kernels(blocks)  # fewest rows first
        self.blocks = blocks if self.block_kernels else None  # no kernels here: no use for them
        if not self.block_kernels:  # [in, out]; the blocks serve one row better
            self.register_buffer("weight_t", linear.weight.detach().t().contiguous(), persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        for kernel in self.block_kernels:
            if rows.shape[0] <= kernel.max_rows:
                out = kernel(rows.contiguous())
                return (out if self.bias is None else out + self.bias).view(*x.shape[:-1], self.out_features)
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


@dataclass(frozen=True)
class BlockKernel:
    """A native kernel over one weight's blocks, for inputs of up to max_rows rows."""

    op: Callable[..., torch.Tensor]
    arguments: tuple[torch.Tensor, ...]  # the weight, in the kernel's layout
    max_rows: int

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.op(rows, *self.arguments)


def block_kernels(blocks: QuantBlocks | None) -> list[BlockKernel]:
    """The kernels over these blocks, fewest rows first; none without blocks or kernels on this machine."""
    ops = native.quant_ops() if blocks is not None else None
    if ops is None:
        return []
    q4_1 = blocks.kind == "q4_1"
    dot_arguments = (blocks.qs, blocks.d, blocks.m) if q4_1 else (blocks.qs, blocks.d)
    dot_op = ops.q4_1_linear if q4_1 else ops.q8_0_linear
    groups = by_groups(blocks)
    if groups is None:
        return [BlockKernel(dot_op, dot_arguments, DOT_ONLY_MAX_ROWS)]
    panel_op = ops.q4_1_panel_linear if q4_1 else ops.q8_0_panel_linear
    return [BlockKernel(dot_op, dot_arguments, DOT_MAX_ROWS), BlockKernel(panel_op, groups, PANEL_MAX_ROWS)]
