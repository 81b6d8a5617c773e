"""SampledLengthsWorkload's lengths for a million requests at numpy speed, draw for draw.

Per request the bench workload makes two scalar draws on one PCG64 Generator:
`rng.integers(len(rows))` (the row) then `rng.integers(2**20)` (LengthSource's text offset:
its size must stay a power of two).
A scalar bounded draw below 2**32 is Lemire's method on the bit generator's buffered 32-bit
outputs (the low then the high half of each 64-bit output): value = (u32 * bound) >> 32,
rejected and drawn again while (u32 * bound) mod 2**32 < 2**32 mod bound. A power-of-two
bound is never rejected, so only row draws can be (about 3 in a million): after each
rejection the rest of the stream is realigned. `sampled_lengths` checks its first requests
against the generator itself and returns None (the caller takes the slow path) when they
differ, so a numpy that draws otherwise costs speed, not correctness.
"""

from __future__ import annotations

import numpy as np

CHECKED = 64


def _u32_stream(seed: int, count: int) -> np.ndarray:
    raw = np.random.default_rng(seed).bit_generator.random_raw(-(-count // 2))
    out = np.empty(raw.size * 2, dtype=np.uint64)
    out[0::2], out[1::2] = raw & np.uint64(0xFFFFFFFF), raw >> np.uint64(32)
    return out[:count]


def row_indices(seed: int, num_rows: int, n: int) -> np.ndarray | None:
    """The row index each of n requests draws; None if num_rows is not below 2**32."""
    if not 0 < num_rows < 1 << 32:
        return None
    bound, threshold = np.uint64(num_rows), np.uint64((1 << 32) % num_rows)
    stream, rows, done, pos = _u32_stream(seed, 2 * n + 64), np.empty(n, dtype=np.int64), 0, 0
    while done < n:
        if pos + 2 * (n - done) > stream.size:
            stream = _u32_stream(seed, stream.size * 2)
        m = stream[pos:pos + 2 * (n - done):2] * bound
        bad = np.flatnonzero((m & np.uint64(0xFFFFFFFF)) < threshold)
        take = n - done if bad.size == 0 else int(bad[0])
        rows[done:done + take] = (m[:take] >> np.uint64(32)).astype(np.int64)
        done, pos = done + take, pos + 2 * take + (1 if bad.size else 0)  # a rejected u32: the row draws again
    return rows


def sampled_lengths(config, rows: list, n: int) -> tuple[list[int], list[int]] | None:
    """(prompt lengths, output lengths) of SampledLengthsWorkload(config, LengthSource(), rows)'s
    first n requests, clipped as it clips them; None when the fast draws do not match it."""
    index = row_indices(config.seed, len(rows), n)
    if index is None:
        return None
    inputs = np.array([r.input_len for r in rows], dtype=np.int64)[index]
    outputs = np.array([r.output_len for r in rows], dtype=np.int64)[index]
    if config.max_input_len:
        inputs = np.minimum(inputs, config.max_input_len)
    if config.max_output_len:
        outputs = np.minimum(outputs, config.max_output_len)
    lengths = np.maximum(inputs, 1).tolist(), np.maximum(outputs, 1).tolist()
    return lengths if _agrees(config, rows, lengths, min(n, CHECKED)) else None


def _agrees(config, rows: list, lengths: tuple[list[int], list[int]], k: int) -> bool:
    from splitserve.bench.workloads import SampledLengthsWorkload
    from splitserve.sim.workload import LengthSource

    slow = SampledLengthsWorkload(config, LengthSource(), rows).requests()
    return all((br.prompt_tokens, br.output_tokens) == (lengths[0][i], lengths[1][i]) for i, br in zip(range(k), slow))
