"""CacheBlend's blended prefill over a CausalLM: reuse cached chunk KV, recompute a few rows.

One request, one pass over the layers (`n` prompt tokens, active rows A, first all of them):

1. Layers before the first check layer run a normal prefill of all rows (fresh K/V).
2. At a check layer, the fresh K of the active rows is compared with the reused K (RoPE-moved
   to the new positions); `selection.select_rows` keeps the highest-deviation rows plus the
   forced ones (rows without cached KV, the last token). Several check layers filter gradually.
   Query-aware options rank rows instead by the attention the forced rows (the question, the
   chat tail, the last token) pay them at the check layer ("attn"), or by deviation x attention
   (the default: V deviation x attention).
3. From the first check layer on, each layer's K/V is the reused K/V with the active rows
   replaced by their fresh values; the active rows attend to it under the exact positional
   causal mask (key position <= the query's own position) and only they go through the MLP.
4. `on_layer(l, K, V)` receives exactly the K/V used in attention at layer l (to persist or send).

With ratio 1.0 every row stays active and the result is a full prefill; with check layer 0
and ratio 0 only forced rows are computed (direct reuse, PromptCache-style).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from splitserve.chunkcache.selection import ChunkBudget, needs_deviation, select_rows
from splitserve.engine.rope import apply_rotary

DEVIATIONS = ("k", "v", "k_rel", "attn", "k_attn", "v_attn")
LayerSink = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class BlendConfig:
    # check layer 2 (layer 1 computed in full): with v_attn on SmolLM2 / MuSiQue at r = 0.15 ROUGE-L 0.755 vs 0.730 at
    # layer 1 and 0.679 for layer-1 K (+0.076 [+0.009, +0.147] over it; README)
    check_layers: tuple[int, ...] = (2,)
    ratios: tuple[float, ...] = (0.15,)  # per check layer, non-increasing (gradual filtering)
    force_last: bool = True
    random_seed: int | None = None  # set: rows are chosen at random instead of by deviation (a baseline)
    # rank rows by fresh-vs-reused K (LMCache v1), V (the CacheBlend prototype), K relative to |K|, the attention
    # the forced rows pay each row ("attn"), or K / V deviation x that attention ("k_attn", "v_attn"; the default:
    # on SmolLM2 / MuSiQue at r = 0.15, check layer 1, first-token KL 0.047 vs 0.070 for "k", ROUGE-L 0.730 vs 0.679)
    deviation: str = "v_attn"
    lead_rows: int = 0  # first rows of every reused chunk always recomputed (EPIC's LegoLink), beyond the ratio
    # reused (not recomputed) K rows x this from the first check layer on: 1 / attention temperature on cached rows
    # (APE's temperature); it is written to the KV cache too, so decoding sees the same keys
    reused_k_scale: float = 1.0

    def __post_init__(self):
        if not self.reused_k_scale > 0:
            raise ValueError(f"reused_k_scale must be > 0, got {self.reused_k_scale}")
        if self.lead_rows < 0:
            raise ValueError(f"lead_rows must be >= 0, got {self.lead_rows}")
        if self.deviation not in DEVIATIONS:
            raise ValueError(f"deviation must be one of {', '.join(DEVIATIONS)}, got {self.deviation!r}")
        if len(self.check_layers) != len(self.ratios) or not self.check_layers:
            raise ValueError("check_layers and ratios need one entry each per check layer (at least one)")
        if list(self.check_layers) != sorted(set(self.check_layers)) or self.check_layers[0] < 0:
            raise ValueError(f"check_layers must be increasing and >= 0, got {self.check_layers}")
        if any(not 0.0 <= r <= 1.0 for r in self.ratios) or list(self.ratios) != sorted(self.ratios, reverse=True):
            raise ValueError(f"ratios must be in [0, 1] and non-increasing, got {self.ratios}")


@dataclass
class ReusedKV:
    """Cached K/V placed at the request's positions; K already RoPE-moved. Rows not covered are 0."""
    layer: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # l -> K_old, V_old: [n, Hkv, D]
    valid: torch.Tensor  # [n] bool: a cached value exists for the row
    starts: tuple[int, ...] = ()  # first row of each reused chunk


@dataclass
class BlendResult:
    logits: torch.Tensor  # [vocab] fp32, next-token logits after the last row
    active_rows: list[int] = field(default_factory=list)  # |A| per layer
    selected: torch.Tensor | None = None  # prompt rows active after the last check layer
    time_s: float = 0.0

    @property
    def computed_rows(self) -> float:
        """Rows computed, averaged over layers (the cost of the prefill in prompt tokens)."""
        return sum(self.active_rows) / len(self.active_rows)


@torch.inference_mode()
def blended_prefill(model, token_ids: torch.Tensor, reused: ReusedKV, cfg: BlendConfig,
                    budgets: list[ChunkBudget] | None = None, on_layer: LayerSink | None = None,
                    forced: torch.Tensor | None = None) -> BlendResult:
    """token_ids: [n]; forced: [n] bool rows always recomputed (beyond uncached rows and the last)."""
    start = time.perf_counter()
    n = token_ids.shape[0]
    device = token_ids.device
    positions = torch.arange(n, device=device)
    candidate = reused.valid.clone()
    if forced is not None:
        candidate &= ~forced
    if cfg.force_last:
        candidate[n - 1] = False
    for first in reused.starts:
        candidate[first:first + cfg.lead_rows] = False
    active = positions
    h = model.embed_tokens(token_ids)  # [n, hidden]
    checks = check_ratios(cfg, len(model.layers))
    result = BlendResult(torch.empty(0))
    for i, layer in enumerate(model.layers):
        old = reused.layer(i) if i >= min(checks) else None
        if i in checks and not needs_deviation(checks[i], budgets):
            keep = select_rows(active, None, candidate, checks[i], budgets)
            active, h = active[keep], h[keep]
        q, k, v = _qkv(layer, model.rotary, h, active)
        if i in checks and needs_deviation(checks[i], budgets):
            dev = _row_scores(cfg, layer.self_attn, q, k, v, old, active, ~candidate[active])  # [A]
            keep = select_rows(active, dev, candidate, checks[i], budgets)
            active, h, q, k, v = active[keep], h[keep], q[keep], k[keep], v[keep]
        if old is not None:
            k_all, v_all = old[0] * cfg.reused_k_scale, old[1].clone()
            k_all[active], v_all[active] = k, v
        else:
            k_all, v_all = k, v
        h = _finish(layer, h, _attend(layer.self_attn, q, k_all, v_all, active, old is None))
        if on_layer is not None:
            on_layer(i, k_all, v_all)
        result.active_rows.append(active.numel())
    last = (active == n - 1).nonzero().flatten()
    if last.numel() != 1:
        raise ValueError("the last prompt row was not recomputed: its logits are unknown (set force_last)")
    result.logits = model.lm_head(model.norm(h[last])).float()[0]
    result.selected, result.time_s = active, time.perf_counter() - start
    return result


def check_ratios(cfg: BlendConfig, num_layers: int) -> dict[int, float]:
    """check layer -> ratio; a check past the model's last layer runs at the last one (with the smallest ratio
    there), so the default check layer 2 means layer 1 on a 2-layer test model rather than no reuse at all."""
    return {min(layer, num_layers - 1): ratio for layer, ratio in zip(cfg.check_layers, cfg.ratios)}


def _row_scores(cfg: BlendConfig, attn, q, k, v, old, active: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """-> [A] the check layer's score of each active row (higher: recompute first); queries: [A] bool, forced rows."""
    fresh, reused_rows = (v, old[1][active]) if cfg.deviation.startswith("v") else (k, old[0][active])
    if cfg.random_seed is not None or not cfg.deviation.endswith("attn"):
        return _deviation(fresh, reused_rows, cfg.random_seed, cfg.deviation == "k_rel")
    received = attention_received(attn, q[queries], k, active[queries], active)
    return received if cfg.deviation == "attn" else _deviation(fresh, reused_rows, None) * received


def attention_received(attn, q: torch.Tensor, k: torch.Tensor, q_rows: torch.Tensor, k_rows: torch.Tensor,
                       block: int = 256) -> torch.Tensor:
    """q: [F, H, D] at prompt rows q_rows; k: [A, Hkv, D] at k_rows -> [A] softmax attention weight each key
    row receives, summed over heads and query rows (causal by position). Query rows go in blocks."""
    k = k.float().repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)  # [A, H, D]
    total = torch.zeros(k.shape[0], device=k.device)
    for i in range(0, q.shape[0], block):
        scores = torch.einsum("fhd,ahd->hfa", q[i:i + block].float(), k) * attn.scale  # [H, f, A]
        future = k_rows[None, :] > q_rows[i:i + block, None]  # [f, A]
        total += scores.masked_fill(future, float("-inf")).softmax(dim=-1).sum(dim=(0, 1))
    return total


def _deviation(k: torch.Tensor, k_old: torch.Tensor, random_seed: int | None, relative: bool = False) -> torch.Tensor:
    if random_seed is not None:
        return torch.rand(k.shape[0], generator=torch.Generator().manual_seed(random_seed)).to(k.device)
    dev = (k.float() - k_old.float()).pow(2).sum(dim=(1, 2))
    return dev / k_old.float().pow(2).sum(dim=(1, 2)).clamp_min(1e-12) if relative else dev


def _qkv(layer, rotary, h: torch.Tensor, rows: torch.Tensor):
    attn = layer.self_attn
    q, k, v = attn.qkv_proj(layer.input_layernorm(h)).split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    cos, sin = rotary.lookup(rows, h.dtype)
    q = apply_rotary(q.view(-1, attn.num_heads, attn.head_dim), cos, sin)  # [A, H, D]
    k = apply_rotary(k.view(-1, attn.num_kv_heads, attn.head_dim), cos, sin)  # [A, Hkv, D]
    return q, k, v.view(-1, attn.num_kv_heads, attn.head_dim)


def _attend(attn, q, k, v, rows: torch.Tensor, causal: bool, block: int = 1024) -> torch.Tensor:
    """q: [A, H, D] at prompt rows `rows` (sorted); k, v: [n, Hkv, D] -> [A, H * D]. Query rows go in
    blocks so the score matrix stays [H, block, keys]."""
    if causal and q.shape[0] <= block:
        return _sdpa(attn, q, k, v, None)
    outs = []
    for i in range(0, q.shape[0], block):
        r = rows[i:i + block]
        end = int(r[-1]) + 1  # keys past the block's last row are masked anyway
        mask = torch.arange(end, device=k.device)[None, :] <= r[:, None]  # [b, end] exact positional causal mask
        outs.append(_sdpa(attn, q[i:i + block], k[:end], v[:end], mask))
    return torch.cat(outs)


def _sdpa(attn, q, k, v, mask) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=None if mask is None else mask[None, None], is_causal=mask is None,
                                         scale=attn.scale, enable_gqa=True)
    return out[0].transpose(0, 1).reshape(-1, attn.q_size)  # [A, H * D]


def _finish(layer, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    h = h + layer.self_attn.o_proj(attn_out)
    return h + layer.mlp(layer.post_attention_layernorm(h))
