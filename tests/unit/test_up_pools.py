"""`splitserve up`: which pools start for which flags."""

import pytest

from splitserve.commands.cluster import pool_sizes


@pytest.mark.parametrize("flags, expected", [
    ((None, None, 0), (1, 1)),   # the default: one prefill + one decode node
    ((None, None, 2), (0, 0)),   # --colocated K alone: K mixed nodes and nothing else
    ((1, None, 1), (1, 1)),      # mixing pools stays possible when both are given
    ((2, 3, 0), (2, 3)),
    ((0, None, 1), (0, 1)),
])
def test_pool_sizes(flags, expected):
    assert pool_sizes(*flags) == expected
