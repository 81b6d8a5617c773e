"""native.py's decode attention over the paged KV cache, against torch's SDPA over the gathered keys."""

import pytest
import torch
import torch.nn.functional as F

from splitserve.engine import native

needs_kernels = pytest.mark.skipif(native._unsupported_reason() is not None,
                                   reason="needs g++ and an x86-64 CPU with AVX2+FMA")


def reference(q, k, v, tables, positions, window, scale):
    block_size, kv_heads, head_dim = k.shape[1:]
    group = q.shape[1] // kv_heads
    out = []
    for b, position in enumerate(positions.tolist()):
        lo = max(0, position - window + 1) if window else 0
        slots = torch.tensor([int(tables[b, p // block_size]) * block_size + p % block_size for p in range(lo, position + 1)])
        keys = k.view(-1, kv_heads, head_dim)[slots].repeat_interleave(group, dim=1).transpose(0, 1)
        values = v.view(-1, kv_heads, head_dim)[slots].repeat_interleave(group, dim=1).transpose(0, 1)
        out.append(F.scaled_dot_product_attention(q[b][:, None], keys, values, scale=scale)[:, 0])
    return torch.stack(out)


def inputs(heads, kv_heads, head_dim, positions, block_size=16, num_blocks=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=generator)
    v = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=generator)
    width = max(positions) // block_size + 1
    tables = torch.stack([torch.randperm(num_blocks, generator=generator)[:width] for _ in positions])
    q = torch.randn(len(positions), heads, head_dim, generator=generator) * 3  # peaked softmaxes too
    return q, k, v, tables, torch.tensor(positions)


@needs_kernels
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 32), (12, 1, 128), (10, 2, 8), (18, 2, 96)])
@pytest.mark.parametrize("window", [0, 20])
def test_matches_sdpa_over_the_gathered_keys(heads, kv_heads, head_dim, window):
    q, k, v, tables, positions = inputs(heads, kv_heads, head_dim, [0, 5, 15, 16, 100, 300])
    out = native.attention_ops().paged_decode_attention(q, k, v, tables, positions, window, head_dim ** -0.5)
    torch.testing.assert_close(out, reference(q, k, v, tables, positions, window, head_dim ** -0.5), rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (12, 1, 128), (10, 2, 8)])
def test_a_16_bit_cache_reads_as_its_values_widened_to_fp32(dtype, heads, kv_heads, head_dim):
    """--kv-cache-dtype float16 / bfloat16: the kernel's answer is SDPA's over the same 16-bit keys and values
    in fp32, to fp32 rounding (nothing is lost beyond storing them)."""
    q, k, v, tables, positions = inputs(heads, kv_heads, head_dim, [0, 15, 16, 100, 300])
    k16, v16 = k.to(dtype), v.to(dtype)
    out = native.attention_ops().paged_decode_attention(q, k16, v16, tables, positions, 20, head_dim ** -0.5)
    expected = reference(q, k16.float(), v16.float(), tables, positions, 20, head_dim ** -0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, reference(q, k, v, tables, positions, 20, head_dim ** -0.5), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_extreme_scores_stay_finite_and_exact():
    q, k, v, tables, positions = inputs(3, 1, 64, [40, 63])
    q[0] *= 100  # scores far apart: the softmax is one-hot up to fp32
    out = native.attention_ops().paged_decode_attention(q, k, v, tables, positions, 0, 0.125)
    assert out.isfinite().all()
    torch.testing.assert_close(out, reference(q, k, v, tables, positions, 0, 0.125), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_bad_input_gets_a_clear_error():
    q, k, v, tables, positions = inputs(9, 3, 64, [10, 20])
    attend = native.attention_ops().paged_decode_attention
    with pytest.raises(RuntimeError, match="outside its block table"):
        attend(q, k, v, tables, torch.tensor([10, 16 * tables.shape[1]]), 0, 0.125)
    bad_tables = tables.clone()
    bad_tables[1, 1] = k.shape[0]
    with pytest.raises(RuntimeError, match="not in the cache"):
        attend(q, k, v, bad_tables, positions, 0, 0.125)
    with pytest.raises(RuntimeError, match="q must be float32"):
        attend(q.double(), k, v, tables, positions, 0, 0.125)
    with pytest.raises(RuntimeError, match="k and v must both be float32, float16 or bfloat16"):
        attend(q, k.half(), v, tables, positions, 0, 0.125)
    with pytest.raises(RuntimeError, match="k and v must both be float32, float16 or bfloat16"):
        attend(q, k.double(), v.double(), tables, positions, 0, 0.125)
    with pytest.raises(RuntimeError, match="multiple of KV heads"):
        attend(q[:, :8].contiguous(), k, v, tables, positions, 0, 0.125)
