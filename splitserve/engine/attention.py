"""Attention over the paged KV cache for one engine step.

A step's tokens are flat: first one token per decoding request, then the chunk of each
request in prefill. Decodes are attended in one batched call: on CPU in fp32, where the native
kernels build, by native.py's decode attention reading each key where it lies through the block
tables (`DecodeBlocks`); elsewhere by SDPA over their gathered blocks. Each prefill chunk goes in
its own call (fresh prompts use the chunk's own K/V with a causal mask).

SmolLM2-135M, 2 threads, decode steps with 64-token prompts (`benchmarks/decode_profile.py
--profile`): SDPA and the gathering took 5.8 ms of a 40 ms batch-8 step and 22 ms of a 94 ms
batch-32 step. With the native kernel, alternating step by step in one process
(`decode_profile.py --threads 2 --batch 1 8 32 --ab-attention --steps 15 --prompt 256`, medians):
batch 1 21.7 against 21.8 ms, batch 8 40.1 against 46.8, batch 32 102.1 against 120.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from splitserve.engine import native


@dataclass
class PrefillChunk:
    start: int  # offset of the chunk in the step's flat tokens
    length: int
    context_slots: torch.Tensor | None  # [ctx] cache slots of all keys; None: chunk is the whole context
    mask: torch.Tensor | None  # [length, ctx] bool (True = attend); None: plain causal


@dataclass
class DecodeBlocks:
    """What the native decode attention reads: each decode's blocks and the position of its query."""

    tables: torch.Tensor  # [Bd, W] block ids, padded past a request's last block
    positions: torch.Tensor  # [Bd] the query's position; it sees keys up to it (within `window`)
    window: int  # sliding window, 0 for none


@dataclass
class AttentionBatch:
    slot_mapping: torch.Tensor  # [T] cache slot each new token's K/V is written to
    num_decodes: int
    decode_slots: torch.Tensor | None  # [Bd * L] cache slots of every decode's keys, padded to L per request
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, L] bool; None: every decode sees all L keys
    prefills: list[PrefillChunk]
    decode_blocks: DecodeBlocks | None = None  # set instead of decode_slots/decode_mask for the native kernel


class PagedKVCache:
    """Per-layer K and V pools: [num_blocks, block_size, kv_heads, head_dim]."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device="cpu"):
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.block_size = block_size

    def flat(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        # -> [num_blocks * block_size, kv_heads, head_dim] views
        k, v = self.k[layer], self.v[layer]
        return k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores the K/V of `slots`, rounded to the cache's dtype (--kv-cache-dtype) where it is not theirs."""
        k_flat, v_flat = self.flat(layer)
        k_flat.index_copy_(0, slots, k.to(k_flat.dtype))
        v_flat.index_copy_(0, slots, v.to(v_flat.dtype))

    def read(self, layer: int, slots: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The K/V at `slots` as one tensor [2, len(slots), kv_heads, head_dim] (for KV transfer),
        written into `out` when given (one copy)."""
        k_flat, v_flat = self.flat(layer)
        if out is None:
            return torch.stack((k_flat[slots], v_flat[slots]))
        torch.index_select(k_flat, 0, slots, out=out[0])
        torch.index_select(v_flat, 0, slots, out=out[1])
        return out


def leave_out_cudnn_sdpa(device: str | torch.device) -> None:
    """On CUDA, keep SDPA off its cuDNN backend (process-wide), so it picks flash or memory-efficient
    attention. cuDNN builds an execution plan for every new shape it meets, and a decode step meets a
    new key length (and batch mix) every step: on an H200 (torch 2.11, the 1b preset in bf16) a
    batch-1 decode step took 52-70 ms at fresh lengths against 16.5 ms once its shapes were planned
    (benchmarks/gpu_check.py)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: PagedKVCache, layer: int,
                    batch: AttentionBatch, scale: float) -> torch.Tensor:
    """q: [T, heads, D]; k, v: [T, kv_heads, D] for the step's new tokens -> [T, heads, D]."""
    cache.write(layer, batch.slot_mapping, k, v)
    if not batch.prefills:
        return _decode_attention(q, cache, layer, batch, scale)
    out = torch.empty_like(q)
    if batch.num_decodes:
        out[: batch.num_decodes] = _decode_attention(q[: batch.num_decodes], cache, layer, batch, scale)
    for chunk in batch.prefills:
        rows = slice(chunk.start, chunk.start + chunk.length)
        out[rows] = _prefill_attention(q[rows], k[rows], v[rows], cache, layer, chunk, scale)
    return out


def _decode_attention(q, cache, layer, batch, scale):
    blocks = batch.decode_blocks
    if blocks is not None:
        return native.attention_ops().paged_decode_attention(
            q.contiguous(), cache.k[layer], cache.v[layer], blocks.tables, blocks.positions, blocks.window, scale)
    k_flat, v_flat = cache.flat(layer)
    bd, heads, head_dim = q.shape
    kv_heads = k_flat.shape[1]
    k_all = k_flat.index_select(0, batch.decode_slots).to(q.dtype).view(bd, -1, kv_heads, head_dim)  # [Bd, L, ...]
    v_all = v_flat.index_select(0, batch.decode_slots).to(q.dtype).view(bd, -1, kv_heads, head_dim)
    # a KV head's query heads (h = kv_head * group + g, as HF's repeat_kv) go in as `group` query rows
    q_grouped = q.reshape(bd, kv_heads, heads // kv_heads, head_dim)
    out = F.scaled_dot_product_attention(
        q_grouped, k_all.transpose(1, 2), v_all.transpose(1, 2), attn_mask=batch.decode_mask, scale=scale,
    )  # [Bd, kv_heads, group, D]
    return out.reshape(bd, heads, head_dim)


def _prefill_attention(q, k, v, cache, layer, chunk: PrefillChunk, scale):
    if chunk.context_slots is not None:
        k_flat, v_flat = cache.flat(layer)
        k = k_flat.index_select(0, chunk.context_slots).to(q.dtype)
        v = v_flat.index_select(0, chunk.context_slots).to(q.dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        attn_mask=None if chunk.mask is None else chunk.mask[None, None],
        is_causal=chunk.mask is None, scale=scale, enable_gqa=True,
    )  # [1, heads, n, D]
    return out[0].transpose(0, 1)
