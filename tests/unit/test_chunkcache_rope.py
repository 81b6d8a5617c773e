"""RoPE re-positioning: shifts compose, the zero shift is the identity, norms are kept."""

from __future__ import annotations

import torch

from splitserve.chunkcache.rope import RopeShifter
from splitserve.engine.rope import RotaryTable, apply_rotary

D, THETA = 32, 10000.0
SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 64}


def _k(n=12, seed=0):
    return torch.randn(n, 2, D, generator=torch.Generator().manual_seed(seed))


def test_shift_of_rotated_k_equals_rotation_at_new_position():
    table, shifter = RotaryTable(D, 512, THETA, SCALING), RopeShifter(D, THETA, SCALING)
    k, p = _k(), torch.randint(0, 200, (12,), generator=torch.Generator().manual_seed(1))
    for delta in (37, -11, 250):
        new = p + delta
        new = new.clamp(min=0)
        expected = apply_rotary(k, *table.lookup(new, torch.float32))
        shifted = shifter.shift(apply_rotary(k, *table.lookup(p, torch.float32)), p, new)
        torch.testing.assert_close(shifted, expected, atol=5e-5, rtol=0)  # the table rounds angles in fp32
    pre = shifter.shift(k, None, p)  # pre-RoPE storage: R(new) applied directly
    torch.testing.assert_close(pre, apply_rotary(k, *table.lookup(p, torch.float32)), atol=1e-5, rtol=0)


def test_composition_identity_and_norm():
    shifter = RopeShifter(D, THETA, None)
    k = _k()
    a, b, c = torch.full((12,), 5), torch.arange(12) * 3, torch.arange(12) - 40
    torch.testing.assert_close(shifter.shift(shifter.shift(k, a, b), b, c), shifter.shift(k, a, c), atol=1e-5, rtol=0)
    assert shifter.shift(k, b, b) is k
    torch.testing.assert_close(shifter.rotate(k, torch.zeros(12)), k, atol=0, rtol=0)
    moved = shifter.shift(k, a, c)
    torch.testing.assert_close(moved.norm(dim=-1), k.norm(dim=-1), atol=1e-5, rtol=0)


def test_dot_product_depends_only_on_offset():
    shifter = RopeShifter(D, THETA, None)
    q, k = _k(1, 2), _k(1, 3)
    dots = [float((shifter.rotate(q, torch.tensor([m + 7])) * shifter.rotate(k, torch.tensor([m]))).sum())
            for m in (0, 19, 300)]
    assert max(dots) - min(dots) < 1e-4
