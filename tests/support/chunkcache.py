"""Helpers for chunk-cache tests: a full prefill through the engine's own paged path."""

from __future__ import annotations

import torch

from splitserve.engine.attention import AttentionBatch, PagedKVCache, PrefillChunk


def reference_prefill(model, ids: torch.Tensor):
    """The engine's forward on a fresh cache -> (K, V [L, n, Hkv, D], last-token logits [vocab])."""
    cfg, n = model.cfg, ids.shape[0]
    cache = PagedKVCache(cfg.num_layers, n, 1, cfg.num_kv_heads, cfg.head_dim, torch.float32)
    batch = AttentionBatch(torch.arange(n), 0, None, None, [PrefillChunk(0, n, None, None)])
    logits = model(ids, torch.arange(n), cache, batch, torch.tensor([n - 1]))
    k = torch.stack([cache.flat(i)[0].clone() for i in range(cfg.num_layers)])
    v = torch.stack([cache.flat(i)[1].clone() for i in range(cfg.num_layers)])
    return k, v, logits[0]
