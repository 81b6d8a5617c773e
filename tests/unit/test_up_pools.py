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


def test_negative_threads_are_refused_before_anything_starts(capsys):
    from splitserve.cli import main

    assert main(["up", "--threads", "-1"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err
