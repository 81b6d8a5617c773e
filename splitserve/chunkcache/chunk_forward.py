"""Computing chunk KV the plain way (a full causal prefill) with Cache-Craft attention statistics.

Used off the request path: by ingest, and after a miss. `spans` name the chunks inside the
token sequence; for each, the head- and layer-averaged attention mass its rows put on each
earlier span (inter), on itself (intra), and per row on all earlier spans (token_inter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

import torch

from splitserve.chunkcache.blend import _attend, _finish, _qkv
from splitserve.chunkcache.variants import ChunkStats


@dataclass
class ForwardOut:
    k: torch.Tensor  # [L, n, Hkv, D] post-RoPE at positions 0..n-1
    v: torch.Tensor
    stats: list[ChunkStats]  # one per span


def full_forward(model, token_ids: torch.Tensor, spans: list[tuple[int, int]] = (),
                 keys: list[str] = ()) -> ForwardOut:
    """token_ids: [n]; spans: (start, end) rows of each chunk, in order; keys: their chunk hashes."""
    return drain(full_forward_steps(model, token_ids, spans, keys))


def full_forward_steps(model, token_ids: torch.Tensor, spans: list[tuple[int, int]] = (),
                       keys: list[str] = ()) -> Generator[None, None, ForwardOut]:
    """full_forward one layer per step (yields between layers; returns the ForwardOut): off-path work that
    the engine loop runs piece by piece (EngineLoop.background), the same arithmetic in the same order."""
    n = token_ids.shape[0]
    with torch.inference_mode():
        rows = torch.arange(n, device=token_ids.device)
        h = model.embed_tokens(token_ids)
    ks, vs = [], []
    acc = [_Acc(len(spans[:i]), e - s) for i, (s, e) in enumerate(spans)]
    for layer in model.layers:
        yield
        with torch.inference_mode():
            q, k, v = _qkv(layer, model.rotary, h, rows)
            for i, (s, e) in enumerate(spans):
                acc[i].add(_attention_probs(layer.self_attn, q[s:e], k[:e], s), spans[:i], s)
            h = _finish(layer, h, _attend(layer.self_attn, q, k, v, rows, True))
        ks.append(k)
        vs.append(v)
    num_layers = len(model.layers)
    stats = [a.stats(tuple(keys[:i]), tuple(e - s for s, e in spans[:i]), num_layers) for i, a in enumerate(acc)]
    with torch.inference_mode():
        return ForwardOut(torch.stack(ks), torch.stack(vs), stats)


def drain(steps: Generator):
    """Runs a step generator to its end -> what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _attention_probs(attn, q: torch.Tensor, k: torch.Tensor, start: int) -> torch.Tensor:
    """q: [m, H, D] at rows start..start+m; k: [start+m, Hkv, D] -> head-mean probabilities [m, start+m]."""
    group = attn.num_heads // attn.num_kv_heads
    k = k.float().repeat_interleave(group, dim=1)  # [e, H, D]
    scores = torch.einsum("mhd,ehd->hme", q.float(), k) * attn.scale
    m, e = q.shape[0], k.shape[0]
    mask = torch.arange(e, device=q.device)[None, :] > (torch.arange(m, device=q.device) + start)[:, None]
    return scores.masked_fill(mask, float("-inf")).softmax(dim=-1).mean(dim=0)


class _Acc:
    def __init__(self, num_prefix: int, length: int):
        self.inter = torch.zeros(num_prefix, dtype=torch.float64)
        self.intra = 0.0
        self.token_inter = torch.zeros(length, dtype=torch.float64)

    def add(self, probs: torch.Tensor, prefix_spans, start: int) -> None:
        for j, (s, e) in enumerate(prefix_spans):
            mass = probs[:, s:e].sum(dim=1).double()  # [m]
            self.inter[j] += mass.sum()
            self.token_inter += mass
        self.intra += float(probs[:, start:].sum())

    def stats(self, keys: tuple[str, ...], lengths: tuple[int, ...], num_layers: int) -> ChunkStats:
        return ChunkStats(keys, lengths, tuple((self.inter / num_layers).tolist()), self.intra / num_layers,
                          tuple((self.token_inter / num_layers).tolist()))
