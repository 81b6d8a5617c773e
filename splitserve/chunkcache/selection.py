"""Which prompt rows a blended prefill recomputes at a check layer (CacheBlend's HKVD choice).

Count rule (pinned by tests): with ratio r and n_valid rows that have cached KV, the top
`max(1, int(r * n_valid))` rows by KV deviation are kept (none when r == 0), or, with per-chunk
budgets (Cache-Craft), `ceil(f_i * len_i)` rows of chunk i. Forced rows (no cached KV, the
question, the last token) are always kept. Result: sorted, unique indices into the active rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkBudget:
    start: int  # prompt rows [start, end) of one reused chunk
    end: int
    fraction: float  # of the chunk's rows to recompute

    def __post_init__(self):
        if not 0 <= self.start <= self.end or not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"bad chunk budget {self}")

    @property
    def count(self) -> int:
        return math.ceil(self.fraction * (self.end - self.start) - 1e-9)


def hkvd_count(ratio: float, num_valid: int) -> int:
    return 0 if ratio <= 0 or num_valid == 0 else min(num_valid, max(1, int(ratio * num_valid)))


def needs_deviation(ratio: float, budgets: list[ChunkBudget] | None) -> bool:
    return any(b.count > 0 for b in budgets) if budgets is not None else ratio > 0


def select_rows(active: torch.Tensor, dev: torch.Tensor | None, candidate: torch.Tensor, ratio: float,
                budgets: list[ChunkBudget] | None = None) -> torch.Tensor:
    """active: [A] prompt rows now computed (sorted); dev: [A] their K deviation (None when no row is
    chosen by deviation); candidate: [n] bool, rows that may be skipped (cached and not forced)
    -> [S] indices into `active`."""
    is_cand = candidate[active]
    keep = ~is_cand
    if budgets is None:
        groups = [(is_cand, hkvd_count(ratio, int(candidate.sum())))]
    else:
        groups = [(is_cand & (active >= b.start) & (active < b.end), b.count) for b in budgets]
    for mask, count in groups:
        idx = mask.nonzero().flatten()
        count = min(count, idx.numel())
        if count > 0:
            keep[idx[torch.topk(dev[idx], count).indices]] = True
    return keep.nonzero().flatten()
