"""Placing cached chunks at a request's positions: the reused K/V a blended prefill starts from.

A chunk's KV is a whole ChunkKV, or a layer_fetch.PendingKV still arriving from Redis: layer l
is then read when the blended prefill reaches layer l (loading overlapped with compute).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitserve.chunkcache.blend import ReusedKV
from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.layer_fetch import PendingKV
from splitserve.chunkcache.rope import RopeShifter
from splitserve.engine.rope import apply_rotary


@dataclass
class PlacedChunk:
    start: int  # prompt row of the chunk's first token
    kv: ChunkKV | PendingKV

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv.layer(i) if isinstance(self.kv, PendingKV) else (self.kv.k[i], self.kv.v[i])


def place_chunks(chunks: list[PlacedChunk], n: int, shifter: RopeShifter, shape: tuple[int, int],
                 dtype: torch.dtype, device="cpu") -> ReusedKV:
    """shape: (Hkv, D). K of each chunk is moved from its stored positions to start..start+len."""
    valid = torch.zeros(n, dtype=torch.bool, device=device)
    tables = []
    for c in chunks:
        rows = torch.arange(c.start, c.start + c.kv.num_tokens, device=device)
        valid[rows] = True
        delta = rows if c.kv.positions is None else rows - c.kv.positions.to(device)
        tables.append(shifter.tables(delta, dtype) if bool(delta.any()) else None)

    def layer(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.zeros((n, *shape), dtype=dtype, device=device)  # [n, Hkv, D]
        v = torch.zeros_like(k)
        for c, table in zip(chunks, tables):
            end = c.start + c.kv.num_tokens
            ck, cv = c.layer(i)
            ck = ck.to(device=device, dtype=dtype)
            k[c.start:end] = ck if table is None else apply_rotary(ck, *table)
            v[c.start:end] = cv
        return k, v
    return ReusedKV(layer, valid, tuple(c.start for c in chunks))
