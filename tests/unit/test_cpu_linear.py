"""The oneDNN packed-weight transform: same results as nn.Linear up to fp32 rounding."""

import pytest
import torch
from torch import nn

from splitserve.engine import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="needs torch built with oneDNN")


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_packed_linear_matches_nn_linear(rows):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 96, bias=True), nn.Linear(96, 32, bias=False))
    x = torch.randn(rows, 48)
    expected = model(x)
    assert cpu_linear.pack_linears(model) == 2
    assert all(isinstance(m, cpu_linear.PackedLinear) for m in model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_non_fp32_layers_are_left_alone():
    model = nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16))
    assert cpu_linear.pack_linears(model) == 0
