"""A transform for CPU fp32: every nn.Linear becomes a oneDNN linear over a weight packed once.

Measured on this project's 2-core CPU (3072x512 fp32 weight, out of cache): 2.6x faster than
nn.Linear at 1 row, 2.3x at 8 rows, 2x at 32 rows, 1.2x at 512 rows. Outputs differ from
nn.Linear only by fp32 rounding (a different summation order). The packing is tuned for a
row count; 16 was the best compromise over 1-32 rows on the `small` model's shapes.
"""

from __future__ import annotations

import torch
from torch import nn

PACK_FOR_ROWS = 16


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_FOR_ROWS))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")


def pack_linears(model: nn.Module) -> int:
    """Replaces fp32 CPU nn.Linear modules in place; returns how many were replaced."""
    if not available():
        return 0
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear) and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu"]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)
