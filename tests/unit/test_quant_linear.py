"""Q4_1/Q8_0 blocks found in fp32 weights, and the native kernels over them, against F.linear.

Weights are made as a quantized GGUF's are: gguf-py (llama.cpp's reference Python) quantizes and
dequantizes them. The kernels must build wherever g++ and AVX2+FMA are (as on CI).
"""

import pytest
import torch
from torch import nn

from splitserve.engine import cpu_linear, native
from splitserve.engine.quant_weights import by_groups, find_blocks, gguf_round_trip

HAS_TOOLCHAIN = native._unsupported_reason() is None
needs_kernels = pytest.mark.skipif(not HAS_TOOLCHAIN, reason="needs g++ and an x86-64 CPU with AVX2+FMA")


def gguf_weight(kind: str, out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return gguf_round_trip(torch.randn(out_features, in_features, generator=generator) * 0.05, kind)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_blocks_are_found_and_reproduce_every_weight_bit_for_bit(kind):
    weight = gguf_weight(kind, 40, 96)
    blocks = find_blocks(weight)
    assert blocks is not None and blocks.kind == kind
    assert torch.equal(blocks.dequantized(), weight)


def test_weights_that_are_not_exactly_blocks_are_left_alone():
    assert find_blocks(torch.randn(40, 96)) is None
    off_by_one_ulp = gguf_weight("q4_1", 40, 96)
    off_by_one_ulp[39, 95] = torch.nextafter(off_by_one_ulp[39, 95], torch.tensor(1.0))
    assert find_blocks(off_by_one_ulp) is None
    assert find_blocks(gguf_weight("q8_0", 8, 96)[:, :80]) is None  # not whole blocks
    assert find_blocks(gguf_weight("q8_0", 8, 96).half()) is None


@needs_kernels
def test_kernels_build_on_a_machine_with_the_toolchain():
    assert native.quant_ops() is not None


@needs_kernels
@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 17])
def test_kernel_matches_fp32_linear(kind, rows):
    weight = gguf_weight(kind, 72, 160, seed=rows)
    blocks = find_blocks(weight)
    op = native.quant_ops().q4_1_linear if kind == "q4_1" else native.quant_ops().q8_0_linear
    x = torch.randn(rows, 160)
    extra = (blocks.m,) if kind == "q4_1" else ()
    torch.testing.assert_close(op(x, blocks.qs, blocks.d, *extra), x @ weight.t(), rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 8, 9, 13, 20, 33])
def test_panel_kernel_matches_fp32_linear(kind, rows):
    weight = gguf_weight(kind, 80, 320, seed=rows)  # 320 inputs: a panel of 256 and one of 64
    ops = native.quant_ops()
    op = ops.q4_1_panel_linear if kind == "q4_1" else ops.q8_0_panel_linear
    x = torch.randn(rows, 320)
    torch.testing.assert_close(op(x, *by_groups(find_blocks(weight))), x @ weight.t(), rtol=1e-5, atol=1e-5)


def test_groups_hold_the_same_weights():
    blocks = find_blocks(gguf_weight("q4_1", 32, 64))
    qs, d, m = by_groups(blocks)
    assert qs.shape == (2, 64, 8) and d.shape == m.shape == (2, 2, 16)
    feature, k = 16 + 9, 40  # group 1, its feature 9: the high nibble of byte 1
    q = int(qs[1, k, 1]) >> 4
    assert d[1, k // 32, 9] * q + m[1, k // 32, 9] == blocks.dequantized()[feature, k]
    assert by_groups(find_blocks(gguf_weight("q4_1", 24, 64))) is None  # not a multiple of 16 features


@needs_kernels
def test_kernel_refuses_mismatched_inputs_with_a_clear_error():
    blocks = find_blocks(gguf_weight("q4_1", 16, 64))
    ops = native.quant_ops()
    with pytest.raises(RuntimeError, match="input features"):
        ops.q4_1_linear(torch.randn(2, 96), blocks.qs, blocks.d, blocks.m)
    with pytest.raises(RuntimeError, match="float32"):
        ops.q4_1_linear(torch.randn(2, 64).double(), blocks.qs, blocks.d, blocks.m)
    with pytest.raises(RuntimeError, match="int8"):
        ops.q8_0_linear(torch.randn(2, 64), blocks.qs, blocks.d)
    with pytest.raises(RuntimeError, match="input features"):
        ops.q4_1_panel_linear(torch.randn(6, 96), *by_groups(blocks))
    with pytest.raises(RuntimeError, match="3-D"):
        ops.q4_1_panel_linear(torch.randn(6, 64), blocks.qs, blocks.d, blocks.m)


@needs_kernels
@pytest.mark.parametrize("out_features", [64, 72])  # 72: no groups of 16, the dot kernels only
@pytest.mark.parametrize("shape", [(1, 96), (8, 96), (9, 96), (40, 96), (2, 3, 96), (200, 96)])
def test_packed_linear_over_blocks_matches_nn_linear(shape, out_features):
    linear = nn.Linear(96, out_features, bias=True)
    with torch.no_grad():
        linear.weight.copy_(gguf_weight("q4_1", out_features, 96))
    model = nn.Sequential(linear)
    x = torch.randn(*shape)
    expected = model(x)
    cpu_linear.pack_linears(model)
    expected_limits = [cpu_linear.DOT_MAX_ROWS, cpu_linear.PANEL_MAX_ROWS] if out_features == 64 else [cpu_linear.DOT_ONLY_MAX_ROWS]
    assert [k.max_rows for k in model[0].block_kernels] == expected_limits
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_quantized_false_keeps_the_fp32_paths():
    model = nn.Sequential(nn.Linear(96, 64))
    with torch.no_grad():
        model[0].weight.copy_(gguf_weight("q8_0", 64, 96))
    cpu_linear.pack_linears(model, quantized=False)
    assert model[0].block_kernels == [] and model[0].blocks is None


def test_a_failed_build_says_why_and_leaves_the_fp32_linears(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SPLITSERVE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_unsupported_reason", lambda needs_compiler=True: None)
    monkeypatch.setattr(native, "_compile_command", lambda output: ["g++", "-x", "c++", "/dev/null", "-no-such-flag"])
    assert native._loaded.__wrapped__() is False
    assert "building splitserve_native.so failed" in caplog.text
    assert not list(tmp_path.rglob("*.so"))


def test_the_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert native._loaded.__wrapped__() is False


def test_a_library_built_for_a_cpu_level_is_keyed_by_the_level_not_this_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv(native.DIR_ENV, str(tmp_path))
    monkeypatch.setenv(native.MARCH_ENV, "native")
    native_key = native._build_key()
    monkeypatch.setenv(native.MARCH_ENV, "x86-64-v3")
    level_key = native._build_key()
    monkeypatch.setattr(native, "_cpu_flags", lambda: {"avx2", "fma"})  # another CPU of the level
    assert native._build_key() == level_key != native_key
    assert native._library_path() == tmp_path / level_key / native.LIBRARY
    assert "-march=x86-64-v3" in native._compile_command(tmp_path / "x.so")
    assert "lacks" in native._unsupported_reason()  # bmi2, f16c, ... missing from that CPU's flags


def test_the_default_build_is_for_the_cpu_level_where_the_cpu_has_it(monkeypatch):
    monkeypatch.delenv(native.MARCH_ENV, raising=False)
    monkeypatch.setattr(native, "_cpu_flags", lambda: native.LEVEL_FLAGS["x86-64-v3"] | {"avx512f"})
    assert native._march() == "x86-64-v3"
    key = native._build_key()
    monkeypatch.setattr(native, "_cpu_flags", lambda: native.LEVEL_FLAGS["x86-64-v3"])  # another CPU of the level
    assert native._build_key() == key  # one library serves both
    monkeypatch.setattr(native, "_cpu_flags", lambda: {"avx", "avx2", "fma"})  # AVX2+FMA without BMI2, F16C, ...
    assert native._march() == "native" and native._unsupported_reason(needs_compiler=False) is None


@pytest.mark.skipif(not HAS_TOOLCHAIN, reason="needs g++ and AVX2+FMA")
def test_a_built_library_loads_with_no_compiler(monkeypatch):
    assert native._loaded()  # built here (make venv builds it)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert native._unsupported_reason() is not None  # it could not be built again
    assert native._loaded.__wrapped__() is True  # but it is there: loaded as it is
