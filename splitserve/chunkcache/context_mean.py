"""A chunk's KV as an expectation over contexts: the mean of its variants computed after different text.

A passage cached alone has rows that never saw anything before them but the prompt head; placed
after other passages those rows are wrong everywhere a little (README, the oracle). Computing it
after some other, neutral passage gives its rows "not first" context; averaging the variants
computed after several such passages is a cheap expectation over what may precede it. K is
post-RoPE, so each variant's K is first rotated to the first variant's positions, then K and V
are averaged (the result keeps those positions: placement re-rotates it as any stored chunk).
"""

from __future__ import annotations

import torch

from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.rope import RopeShifter


def mean_kv(variants: list[ChunkKV], shifter: RopeShifter) -> ChunkKV:
    """variants: the same chunk's KV under different contexts (post-RoPE) -> their mean at variants[0]'s positions."""
    if not variants:
        raise ValueError("mean_kv needs at least one variant")
    first = variants[0]
    if any(v.num_tokens != first.num_tokens or v.k.shape != first.k.shape for v in variants):
        raise ValueError("variants of one chunk must have the same shape")
    if any(v.positions is None for v in variants):
        raise ValueError("mean_kv takes post-RoPE variants (with positions)")
    k = torch.zeros_like(first.k, dtype=torch.float32)  # [L, n, Hkv, D]
    v = torch.zeros_like(k)
    for other in variants:
        delta = first.positions - other.positions  # [n]: move this variant's K to the first's positions
        for layer in range(k.shape[0]):
            k[layer] += shifter.rotate(other.k[layer].float(), delta)
        v += other.v.float()
    return ChunkKV((k / len(variants)).to(first.k.dtype), (v / len(variants)).to(first.v.dtype),
                   first.positions.clone())
