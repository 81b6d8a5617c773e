"""The recompute selection: count rule, forced rows, per-chunk budgets."""

from __future__ import annotations

import torch

from splitserve.chunkcache.selection import ChunkBudget, hkvd_count, select_rows


def test_count_rule_is_pinned():
    assert [hkvd_count(r, 100) for r in (0.0, 0.001, 0.05, 0.15, 0.999, 1.0)] == [0, 1, 5, 15, 99, 100]
    assert hkvd_count(0.15, 0) == 0
    assert hkvd_count(0.5, 3) == 1


def test_selects_top_deviation_plus_forced_sorted_unique():
    n = 20
    active = torch.arange(n)
    candidate = torch.ones(n, dtype=torch.bool)
    candidate[[0, 7, 19]] = False  # uncached rows, the last row
    dev = torch.arange(n, dtype=torch.float32).flip(0)  # row 0 deviates most
    keep = select_rows(active, dev, candidate, 0.25)
    rows = active[keep].tolist()
    assert rows == sorted(set(rows))
    assert {0, 7, 19} <= set(rows)
    assert set(rows) - {0, 7, 19} == {1, 2, 3, 4}  # int(0.25 * 17) = 4 highest among candidates
    assert select_rows(active, None, candidate, 0.0).tolist() == [0, 7, 19]


def test_forced_rows_kept_within_a_subset_of_active_rows():
    active = torch.tensor([2, 5, 9, 11])
    candidate = torch.ones(12, dtype=torch.bool)
    candidate[11] = False
    keep = select_rows(active, torch.tensor([0.1, 3.0, 0.2, 0.0]), candidate, 0.1)
    assert active[keep].tolist() == [5, 11]  # max(1, int(0.1 * 11)) = 1


def test_per_chunk_budgets():
    n = 30
    active = torch.arange(n)
    candidate = torch.ones(n, dtype=torch.bool)
    candidate[29] = False
    dev = torch.rand(n, generator=torch.Generator().manual_seed(0))
    budgets = [ChunkBudget(0, 10, 0.0), ChunkBudget(10, 20, 0.25), ChunkBudget(20, 29, 1.0)]
    rows = set(active[select_rows(active, dev, candidate, 0.5, budgets)].tolist())
    assert not rows & set(range(10))
    assert len(rows & set(range(10, 20))) == 3  # ceil(0.25 * 10)
    top = set((torch.topk(dev[10:20], 3).indices + 10).tolist())
    assert rows & set(range(10, 20)) == top
    assert rows >= set(range(20, 30))
