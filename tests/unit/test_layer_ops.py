"""native.py's layer ops (RMSNorm, residual add + RMSNorm, RoPE, SiLU-and-multiply) against torch's."""

import pytest
import torch
import torch.nn.functional as F

from splitserve.engine import native
from splitserve.engine.model import RMSNorm

needs_kernels = pytest.mark.skipif(native._unsupported_reason() is not None,
                                   reason="needs g++ and an x86-64 CPU with AVX2+FMA")


@needs_kernels
@pytest.mark.parametrize("rows,width", [(1, 576), (8, 64), (33, 1024)])
def test_matches_torch(rows, width):
    x, residual, weight = torch.randn(rows, width) * 3, torch.randn(rows, width), torch.randn(width)
    ops = native.layer_ops()
    expected = F.rms_norm(x, (width,), weight, 1e-5)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-5), expected, rtol=1e-5, atol=1e-5)
    total, normed = ops.add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(total, x + residual)
    torch.testing.assert_close(normed, F.rms_norm(x + residual, (width,), weight, 1e-6), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_bad_input_gets_a_clear_error():
    ops = native.layer_ops()
    with pytest.raises(RuntimeError, match="weight must be float32"):
        ops.rms_norm(torch.randn(2, 64), torch.randn(32), 1e-5)
    with pytest.raises(RuntimeError, match="residual"):
        ops.add_rms_norm(torch.randn(2, 64), torch.randn(3, 64), torch.randn(64), 1e-5)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        ops.rms_norm(torch.randn(2, 60), torch.randn(60), 1e-5)


@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 64), (4, 60)])  # 60: not a multiple of 8, torch's path
def test_the_model_norm_gives_hf_formula_on_any_path(shape):
    norm = RMSNorm(shape[-1], 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1]))
    x, residual = torch.randn(*shape), torch.randn(*shape)
    hf = lambda h: norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))  # noqa: E731
    torch.testing.assert_close(norm.forward(x), hf(x), rtol=1e-5, atol=1e-5)
    total, normed = norm.add_and_norm(x, residual)
    torch.testing.assert_close(total, x + residual)
    torch.testing.assert_close(normed, hf(x + residual), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_rope_is_apply_rotary_signed_bit_for_bit():
    from splitserve.engine.rope import RotaryTable, apply_rotary_signed
    heads, kv_heads, head_dim = 9, 3, 64
    qkv = torch.randn(5, (heads + 2 * kv_heads) * head_dim)
    cos, sin = RotaryTable(head_dim, 128, 10000.0, None).lookup_signed(torch.tensor([0, 3, 7, 50, 127]), torch.float32)
    expected = apply_rotary_signed(qkv[:, :(heads + kv_heads) * head_dim].unflatten(-1, (-1, head_dim)), cos, sin)
    assert torch.equal(native.layer_ops().rope(qkv, heads + kv_heads, head_dim, cos, sin), expected)
    with pytest.raises(RuntimeError, match="fit in a row"):
        native.layer_ops().rope(qkv, 16, head_dim, cos, sin)


@needs_kernels
def test_silu_mul_matches_torch():
    gate_up = torch.randn(6, 2 * 1536) * 6
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(native.layer_ops().silu_mul(gate_up), F.silu(gate) * up, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        native.layer_ops().silu_mul(torch.randn(2, 24))
