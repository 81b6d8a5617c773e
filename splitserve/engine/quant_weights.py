"""Finding GGML Q4_1 / Q8_0 blocks in fp32 weights that are exactly their dequantized values.

A model converted from a quantized GGUF (SmolLM2-135M-Instruct ships as Q4_1 with a Q8_0
embedding) holds fp32 weights that are, block by block of 32 along the input features,
d * q + m (Q4_1: q in 0..15, d and m float16) or d * q (Q8_0: q in -127..127, d float16), as
llama.cpp's and gguf-py's dequantizers compute them in fp32. `find_blocks` recovers d, m and q and
accepts a weight only when every value is reproduced bit for bit, so a linear over the blocks
computes the same function as over the fp32 weight, from a sixth (Q4_1) or a quarter (Q8_0) of
the bytes. Any other weight (random test models, fp16/bf16 checkpoints) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 32


@dataclass(frozen=True)
class QuantBlocks:
    """One weight [N, K] as blocks, in csrc/quant_linear.cpp's layout."""

    kind: str  # "q4_1" or "q8_0"
    qs: torch.Tensor  # q4_1: uint8 [N, K/2], two weights a byte; q8_0: int8 [N, K]
    d: torch.Tensor  # float32 [N, K/32]
    m: torch.Tensor | None  # float32 [N, K/32] for q4_1

    def dequantized(self) -> torch.Tensor:
        q = self.qs.float() if self.kind == "q8_0" else _unpack_nibbles(self.qs)
        rows = q.shape[0]
        w = q.view(rows, -1, BLOCK) * self.d.unsqueeze(-1)
        if self.m is not None:
            w = w + self.m.unsqueeze(-1)
        return w.reshape(rows, -1)


def find_blocks(weight: torch.Tensor) -> QuantBlocks | None:
    """The weight's exact Q4_1 or Q8_0 blocks, or None when it is not exactly either."""
    if weight.dim() != 2 or weight.dtype != torch.float32 or weight.shape[1] % BLOCK or not weight.isfinite().all():
        return None
    blocks = weight.detach().reshape(weight.shape[0], -1, BLOCK)
    for as_kind in (_as_q8_0, _as_q4_1):
        if as_kind(blocks[:1]) is not None:  # the first row rules a kind out cheaply: no full pass for it
            found = as_kind(blocks)
            if found is not None:
                return found
    return None


def gguf_round_trip(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The fp32 weight as a GGUF of that kind holds it (gguf-py's quantize, then dequantize)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    qtype = GGMLQuantizationType[kind.upper()]
    values = weight.detach().float().numpy()
    return torch.from_numpy(dequantize(quantize(values, qtype), qtype).copy())


def _as_q4_1(blocks: torch.Tensor) -> QuantBlocks | None:
    m = blocks.amin(-1)
    if not torch.equal(m.half().float(), m):
        return None
    d = ((blocks.amax(-1) - m) / 15).half().float()
    q = _fit_q(blocks - m.unsqueeze(-1), d, 0, 15)
    if not torch.equal(q * d.unsqueeze(-1) + m.unsqueeze(-1), blocks):
        return None
    return QuantBlocks("q4_1", _pack_nibbles(q.to(torch.uint8)), d.contiguous(), m.contiguous())


def _as_q8_0(blocks: torch.Tensor) -> QuantBlocks | None:
    d = (blocks.abs().amax(-1) / 127).half().float()
    q = _fit_q(blocks, d, -127, 127)
    if not torch.equal(q * d.unsqueeze(-1), blocks):
        return None
    rows = blocks.shape[0]
    return QuantBlocks("q8_0", q.to(torch.int8).reshape(rows, -1).contiguous(), d.contiguous(), None)


def _fit_q(values: torch.Tensor, d: torch.Tensor, low: int, high: int) -> torch.Tensor:
    scale = torch.where(d == 0, torch.ones_like(d), d).unsqueeze(-1)
    return torch.round(values / scale).clamp(low, high)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[N, B, 32] of 0..15 -> [N, B*16] bytes: weight j low nibble, weight 16+j high (GGML's order)."""
    packed = q[..., :16] | (q[..., 16:] << 4)
    return packed.reshape(q.shape[0], -1).contiguous()


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    pairs = qs.view(qs.shape[0], -1, 16)
    return torch.cat([pairs & 0x0F, pairs >> 4], dim=-1).reshape(qs.shape[0], -1).float()


GROUP = 16  # output features per group in csrc/quant_linear.cpp's panel layout


def by_groups(blocks: QuantBlocks) -> tuple[torch.Tensor, ...] | None:
    """The panel kernels' arguments (qs, d[, m]) in groups of 16 features; None when N is not a multiple of 16."""
    rows, k = blocks.d.shape[0], blocks.d.shape[1] * BLOCK
    if rows % GROUP:
        return None
    scales = [s.view(rows // GROUP, GROUP, -1).transpose(1, 2).contiguous() for s in (blocks.d, blocks.m) if s is not None]
    if blocks.kind == "q8_0":
        return (blocks.qs.view(rows // GROUP, GROUP, k).transpose(1, 2).contiguous(), *scales)
    q = _unpack_nibbles(blocks.qs).to(torch.uint8).view(rows // GROUP, GROUP, k).transpose(1, 2)
    return ((q[..., :GROUP // 2] | (q[..., GROUP // 2:] << 4)).contiguous(), *scales)
