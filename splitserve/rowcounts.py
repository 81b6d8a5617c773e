"""How many rows the engine's packed CPU linears run for a step's input rows (no torch here).

splitserve/engine/cpu_linear.py runs its linears by these rules, and the simulator's step model
(splitserve/sim/profile.py, which must not import torch) charges a step by them: inputs pad to a
bounded set of row counts (exact up to 16, then multiples of 16 up to 256, then of 128), except
that up to SPLIT_MAX_REMAINDER rows past a multiple of 128 (past 256) run as a second call.
"""

from __future__ import annotations

SPLIT_MAX_REMAINDER = 64  # rows over a multiple of 128 (past 256) that run as a second call rather than padded


def bucket_rows(rows: int) -> int:
    """The padded row count for `rows` input rows (at most ~16 + 15 + n/128 distinct values)."""
    if rows <= 16:
        return rows
    step = 16 if rows <= 256 else 128
    return -(-rows // step) * step


def row_calls(rows: int) -> tuple[int, ...]:
    """The rows of each packed call for `rows` input rows (each call padded by `bucket_rows`)."""
    head = rows // 128 * 128
    if rows <= 256 or rows == head or rows - head > SPLIT_MAX_REMAINDER:
        return (rows,)
    return (head, rows - head)


def computed_rows(rows: int) -> int:
    """The rows the packed linears compute for `rows` input rows, padding included."""
    return sum(bucket_rows(n) for n in row_calls(rows))
