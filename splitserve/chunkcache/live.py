"""Cache-Craft in live traffic: recording the chunk variants that requests compute.

A chunk a request uses in a context no stored variant was computed in (a miss, or a reuse that
needs fixing) is recorded: its KV as computed inside this prompt, after exactly what preceded
it here (the prefix hash and start identify that context), with its attention statistics
(inter per preceding chunk, intra, per token) for later planning (cachecraft.plan_variant). A
chunk gets variants this way while it holds fewer than `limit`; past the per-chunk cap
(CacheCraftConfig.max_variants) and the local tier's bytes the reuse x saving score evicts
(cachecraft.variants_to_evict, tiers.LocalTier), and Redis' TTL bounds every variant's life.

The KV comes from one causal forward of the prompt up to the last recorded chunk, on the
engine thread, after the request's own prefill (prefill_node/chunks.py), off its critical path:
one layer per piece of engine-loop background work, so requests that arrive meanwhile go first.
"""

from __future__ import annotations

from typing import Generator

import torch

from splitserve.chunkcache.cachecraft import ChunkContext
from splitserve.chunkcache.chunk_forward import full_forward_steps
from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.keys import prefix_hash
from splitserve.chunkcache.variants import VariantMeta


def is_exact(variant: VariantMeta, ctx: ChunkContext) -> bool:
    """The variant was computed after the very tokens that precede the chunk now."""
    return variant.prefix_hash == ctx.prefix_hash and variant.start == ctx.start


def record_targets(variants: list[list[VariantMeta]], contexts: list[ChunkContext], limit: int) -> list[int]:
    """Indices of the request's chunks to record: no variant from this context yet, fewer than limit held."""
    return [i for i, (held, ctx) in enumerate(zip(variants, contexts))
            if len(held) < limit and not any(is_exact(v, ctx) for v in held)]


def variants_in_prompt_steps(model, prompt: list[int], spans: list[tuple[int, int]], keys: list[str],
                             targets: list[int], device="cpu") -> Generator[None, None, list]:
    """Engine thread, one layer per step (chunk_forward.full_forward_steps; run it whole with `drain`).
    spans: (start, length) of every chunk, ordered; -> a variant per target chunk, computed in this
    prompt (statistics against all the chunks before it)."""
    if not targets:
        return []
    end = max(spans[i][0] + spans[i][1] for i in targets)
    inside = [(s, s + n) for s, n in spans if s + n <= end]
    ids = torch.tensor(prompt[:end], dtype=torch.long, device=device)
    out = yield from full_forward_steps(model, ids, inside, keys[:len(inside)])
    entries = []
    for i in targets:
        s, e = inside[i]
        kv = ChunkKV(out.k[:, s:e].clone(), out.v[:, s:e].clone(), torch.arange(s, e))
        entries.append((VariantMeta(keys[i], prefix_hash(prompt[:s]), s, e - s, 0, out.stats[i]), kv))
    return entries
