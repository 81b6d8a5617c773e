"""The decode fast paths give what the plain formulas give: RoPE with the sign folded in (bit for
bit), grouped decode attention with and without a mask (vs HF's repeat_kv + softmax), one-row linears."""

import pytest
import torch
from torch import nn

from splitserve.engine import cpu_linear
from splitserve.engine.attention import AttentionBatch, PagedKVCache, paged_attention
from splitserve.engine.rope import RotaryTable, apply_rotary, apply_rotary_signed

SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 64}


def test_rotary_with_signed_sin_is_bit_identical_on_strided_q_and_k():
    torch.manual_seed(0)
    table = RotaryTable(64, 512, 10000.0, SCALING)
    positions = torch.tensor([0, 5, 63, 64, 511])
    qkv = torch.randn(5, (9 + 3 + 3) * 64)
    qk = qkv[:, :12 * 64].unflatten(-1, (12, 64))  # q and k side by side, rows strided by the fused width
    expected = apply_rotary(qk, *table.lookup(positions, torch.float32))
    assert torch.equal(apply_rotary_signed(qk, *table.lookup_signed(positions, torch.float32)), expected)


def reference_attention(q, k, v, scale):
    """HF's eager attention for one query row per request: q [B, H, D]; k, v [B, L, KVH, D]."""
    group = q.shape[1] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)  # [B, L, H, D]
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bhd,blhd->bhl", q, k) * scale
    return torch.einsum("bhl,blhd->bhd", scores.softmax(-1), v)


@pytest.mark.parametrize("masked", [False, True])
def test_grouped_decode_attention_matches_repeat_kv(masked):
    torch.manual_seed(0)
    heads, kv_heads, dim, block, num_keys = 9, 3, 16, 4, 10
    cache = PagedKVCache(1, 8, block, kv_heads, dim, torch.float32)
    blocks = [torch.tensor([5, 2, 7]), torch.tensor([1, 3, 6])]  # 12 slots per request, 10 keys used
    slots = torch.cat([(b[:, None] * block + torch.arange(block)).flatten()[:num_keys] for b in blocks])
    k, v = torch.randn(2 * num_keys, kv_heads, dim), torch.randn(2 * num_keys, kv_heads, dim)
    cache.write(0, slots, k, v)
    q = torch.randn(2, heads, dim)
    new_slots = slots.view(2, num_keys)[:, -1]
    mask = torch.ones(2, 1, 1, num_keys, dtype=torch.bool) if masked else None
    batch = AttentionBatch(new_slots, 2, slots, mask, [])
    out = paged_attention(q, k.view(2, num_keys, kv_heads, dim)[:, -1], v.view(2, num_keys, kv_heads, dim)[:, -1],
                          cache, 0, batch, dim ** -0.5)
    expected = reference_attention(q, k.view(2, num_keys, kv_heads, dim), v.view(2, num_keys, kv_heads, dim), dim ** -0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not cpu_linear.available(), reason="needs torch built with oneDNN")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (48,), (1, 1, 48), (2, 48)])
def test_packed_linear_one_row_paths_match_nn_linear(shape, bias, threads):
    torch.manual_seed(0)
    linear = nn.Linear(48, 80, bias=bias)
    x = torch.randn(*shape)
    expected = linear(x)
    packed = cpu_linear.PackedLinear(linear)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # one row and one thread: x @ w_t; otherwise the packed path
    try:
        out = packed(x)
    finally:
        torch.set_num_threads(before)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
