"""context_mean.mean_kv: a chunk's variants under several contexts averaged at one set of positions."""

from __future__ import annotations

import pytest
import torch

from splitserve.chunkcache.context_mean import mean_kv
from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.rope import RopeShifter

SHIFTER = RopeShifter(8, 10000.0, None)


def _variant(k0: torch.Tensor, v: torch.Tensor, start: int) -> ChunkKV:
    """k0: pre-RoPE [L, n, H, D] -> the post-RoPE variant at positions start..start+n."""
    positions = torch.arange(start, start + k0.shape[1])
    return ChunkKV(torch.stack([SHIFTER.rotate(k, positions) for k in k0]), v, positions)


def test_mean_aligns_k_to_the_first_variants_positions():
    g = torch.Generator().manual_seed(0)
    k_a, k_b = torch.randn(2, 5, 1, 8, generator=g), torch.randn(2, 5, 1, 8, generator=g)
    v_a, v_b = torch.randn(2, 5, 1, 8, generator=g), torch.randn(2, 5, 1, 8, generator=g)
    out = mean_kv([_variant(k_a, v_a, 3), _variant(k_b, v_b, 40)], SHIFTER)
    expected = _variant((k_a + k_b) / 2, (v_a + v_b) / 2, 3)
    assert torch.equal(out.positions, expected.positions)
    torch.testing.assert_close(out.k, expected.k, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.v, expected.v, atol=1e-6, rtol=0)


def test_one_variant_is_its_own_mean_and_bad_input_is_refused():
    kv = _variant(torch.randn(2, 4, 1, 8), torch.randn(2, 4, 1, 8), 7)
    out = mean_kv([kv], SHIFTER)
    torch.testing.assert_close(out.k, kv.k, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least one"):
        mean_kv([], SHIFTER)
    with pytest.raises(ValueError, match="same shape"):
        mean_kv([kv, _variant(torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8), 0)], SHIFTER)
    with pytest.raises(ValueError, match="post-RoPE"):
        mean_kv([ChunkKV(kv.k, kv.v, None)], SHIFTER)
