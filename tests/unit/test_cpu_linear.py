"""The oneDNN packed-weight transform: same results as nn.Linear up to fp32 rounding."""

import pytest
import torch
from torch import nn

from splitserve.engine import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="needs torch built with oneDNN")


@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (64, 48), (17, 48), (3, 100, 48), (300, 48), (513, 48), (600, 48)])
def test_packed_linear_matches_nn_linear(shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 96, bias=True), nn.Linear(96, 32, bias=False))
    x = torch.randn(*shape)
    expected = model(x)
    assert cpu_linear.pack_linears(model) == 2
    assert all(isinstance(m, cpu_linear.PackedLinear) for m in model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_non_fp32_layers_are_left_alone():
    model = nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16))
    assert cpu_linear.pack_linears(model) == 0


def test_row_counts_fall_in_a_bounded_set_of_buckets():
    buckets = {cpu_linear.bucket_rows(n) for n in range(1, 2049)}
    assert all(cpu_linear.bucket_rows(n) >= n for n in range(1, 2049))
    assert [cpu_linear.bucket_rows(n) for n in (1, 16, 17, 32, 33, 256, 257, 2048)] == [1, 16, 32, 32, 48, 256, 384, 2048]
    assert len(buckets) == 16 + 15 + 14  # oneDNN keeps memory per row count seen: this bounds it


def test_rows_a_little_past_a_multiple_of_128_run_as_a_second_call_instead_of_padding():
    assert cpu_linear.row_calls(513) == (512, 1) and cpu_linear.computed_rows(513) == 513
    assert cpu_linear.row_calls(257) == (256, 1) and cpu_linear.computed_rows(300) == 256 + 48
    assert cpu_linear.row_calls(600) == (600,) and cpu_linear.computed_rows(600) == 640  # 88 over: padded
    assert cpu_linear.row_calls(256) == (256,) and cpu_linear.row_calls(640) == (640,)
    seen = {cpu_linear.bucket_rows(calls) for n in range(1, 4097) for calls in cpu_linear.row_calls(n)}
    assert seen <= {cpu_linear.bucket_rows(n) for n in range(1, 4097)}  # no row count beyond today's buckets


def test_a_split_call_gives_the_padded_calls_outputs_exactly():
    torch.manual_seed(0)
    linear = cpu_linear.PackedLinear(nn.Linear(64, 96))
    x = torch.randn(513, 64)
    assert torch.equal(linear(x), linear._packed(x))  # 512 + 1 rows against 513 padded to 640
