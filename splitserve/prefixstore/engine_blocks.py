"""The engine side of the prefix store. A shareable block is one of the prefix cache's own (block_pool.py): a full
block of the prompt before its last token, named by its chained hash from the request's root (its cache salt), so a
block read back into the pool is found by the engine's own prefix lookup when the request is scheduled, and
whatever the store holds is exactly what this node would have computed. Requests with a LoRA adapter (their KV is
this node's load of it) and those asking for prompt logprobs (they read no cached block) share nothing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitserve.chunkcache.format import ChunkKV
from splitserve.engine import Engine, SamplingParams
from splitserve.engine.block_pool import block_hashes, kv_root


@dataclass(frozen=True)
class PromptBlocks:
    """A prompt's shareable blocks: block j holds tokens [j * block_size, (j + 1) * block_size)."""

    hashes: tuple[bytes, ...]
    token_ids: tuple[tuple[int, ...], ...]
    root: bytes

    def parent(self, j: int) -> bytes:
        return self.hashes[j - 1] if j else self.root


@dataclass
class ExportedBlocks:
    """Blocks copied out of the pool: K and V [num_layers, len(indices), block_size, kv_heads, head_dim]."""

    hashes: list[bytes]
    indices: list[int]  # each one's index j in its prompt (its tokens' positions start at j * block_size)
    k: torch.Tensor
    v: torch.Tensor
    buffer: torch.Tensor  # what k and v were copied into (export_buffer): free to reuse once they are written

    def block(self, i: int, block_size: int) -> ChunkKV:
        """Block i's K/V as views (a layer's K of one block is contiguous: encoded without a copy)."""
        start = self.indices[i] * block_size
        return ChunkKV(self.k[:, i], self.v[:, i], torch.arange(start, start + block_size, dtype=torch.int64))


def shareable_blocks(engine: Engine, prompt: list[int], params: SamplingParams) -> PromptBlocks | None:
    """None when nothing of this request is shared (above), or the prefix cache is off."""
    if not engine.pool.enable_prefix_caching or params.lora is not None or params.prompt_logprobs is not None:
        return None
    size, root = engine.config.block_size, kv_root(params.kv_namespace)
    usable = prompt[:len(prompt) - 1]  # the last prompt token is always computed
    hashes = block_hashes(usable, size, root)
    tokens = tuple(tuple(usable[j * size:(j + 1) * size]) for j in range(len(hashes)))
    return PromptBlocks(hashes, tokens, root)


def cached_here(engine: Engine, blocks: PromptBlocks) -> int:
    """How many leading blocks the pool holds now. Safe off the engine thread: a snapshot that may be stale (a block
    evicted meanwhile is computed, one cached meanwhile is read again: both harmless)."""
    cached = engine.pool.cached
    return next((j for j, h in enumerate(blocks.hashes) if h not in cached), len(blocks.hashes))


def import_blocks(engine: Engine, blocks: PromptBlocks, start: int, kvs: list[ChunkKV]) -> int:
    """Engine thread: blocks start, start + 1, ... (their KV `kvs`, in order) join the prefix cache as free cached
    blocks, to be taken by the request admitted next; stops where the pool has no free block. Returns how many."""
    pool, cache = engine.pool, engine.cache
    here = [pool.cached[h] for h in blocks.hashes[:start + len(kvs)] if h in pool.cached]
    pool.acquire(here)  # the prompt's blocks found here stay while the others are allocated
    added = []
    for j, kv in enumerate(kvs, start):
        if blocks.hashes[j] in pool.cached:
            continue
        fresh = pool.allocate(1)
        if fresh is None:
            break
        for layer in range(len(cache.k)):
            cache.k[layer][fresh[0]].copy_(kv.k[layer])
            cache.v[layer][fresh[0]].copy_(kv.v[layer])
        pool.register_full(fresh[0], blocks.parent(j), list(blocks.token_ids[j]))
        added.append(fresh[0])
    pool.release(here + added)  # free and cached; those found here evicted last
    return len(added)


def export_blocks(engine: Engine, blocks: PromptBlocks, wanted: list[int],
                  buffer: torch.Tensor | None = None) -> ExportedBlocks | None:
    """Engine thread, after the prompt's prefill: a copy of its blocks `wanted` (indices into `blocks`) that the
    prefix cache holds (whether the request holds them still or has finished); None when it holds none of them.
    Copied into `buffer` ([2, num_layers, >= len(wanted), block_size, kv_heads, head_dim], export_buffer) when it
    is given: fresh memory costs more than the copy (page faults)."""
    cached = engine.pool.cached
    held = [j for j in wanted if blocks.hashes[j] in cached]
    if not held:
        return None
    cache = engine.cache
    ids = torch.tensor([cached[blocks.hashes[j]] for j in held], dtype=torch.long, device=cache.k[0].device)
    out = buffer if buffer is not None and buffer.device == ids.device else export_buffer(engine, len(held))
    for layer, (k, v) in enumerate(zip(cache.k, cache.v)):
        torch.index_select(k, 0, ids, out=out[0, layer, :len(held)])
        torch.index_select(v, 0, ids, out=out[1, layer, :len(held)])
    kv = out[:, :, :len(held)].cpu()
    return ExportedBlocks([blocks.hashes[j] for j in held], held, kv[0], kv[1], out)


def export_buffer(engine: Engine, num_blocks: int) -> torch.Tensor:
    """Room for num_blocks blocks' K and V, as export_blocks fills it."""
    k = engine.cache.k[0]
    return torch.empty((2, len(engine.cache.k), num_blocks, *k.shape[1:]), dtype=k.dtype, device=k.device)
