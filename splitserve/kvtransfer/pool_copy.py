"""Copies between a node's KV pool and a transfer's layer buffers: a prefill node reading a layer
out of its pool, a decode node writing a received one in. Where the transfer is checksummed and
the native kernels can take the tensors (contiguous, on CPU), the copy computes the layer's
`MULSUM_64` checksum as it goes (`checksum.py`), so no end reads the layer again to hash it."""

from __future__ import annotations

import torch

from splitserve.engine import native
from splitserve.kvtransfer.checksum import to_int64


def _fusable(slots: torch.Tensor, *tensors: torch.Tensor):
    """The native ops when they can take these tensors (contiguous, on CPU, int64 slots), else None."""
    if slots.dtype != torch.long or not all(t.device.type == "cpu" and t.is_contiguous() for t in (slots, *tensors)):
        return None
    return native.kv_ops()


def gather_checksummed(k_flat: torch.Tensor, v_flat: torch.Tensor, slots: torch.Tensor, out: torch.Tensor,
                       seed: int) -> int | None:
    """out[0], out[1] = k_flat[slots], v_flat[slots] (a layer read out of a pool, `out` [2, n,
    kv_heads, head_dim]) and the `MULSUM_64` checksum of out, hashed while copying; None, with
    nothing copied, where the native kernels cannot do it (not built, not CPU)."""
    ops = _fusable(slots, k_flat, v_flat, out)
    return None if ops is None else ops.gather_mulsum(k_flat, v_flat, slots, out, to_int64(seed))


def scatter_checksummed(kv: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, slots: torch.Tensor,
                        seed: int) -> int | None:
    """k_flat[slots], v_flat[slots] = kv[0], kv[1] (a received layer written into a pool) and the
    `MULSUM_64` checksum of kv, hashed while copying; None, with nothing written, where the native
    kernels cannot do it."""
    ops = _fusable(slots, kv, k_flat, v_flat)
    return None if ops is None else ops.scatter_mulsum(kv, k_flat, v_flat, slots, to_int64(seed))


def scatter_layer(kv: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, slots: torch.Tensor) -> None:
    """k_flat[slots], v_flat[slots] = kv[0], kv[1], unhashed: the native kernels' copy where they
    can take the tensors (about twice index_copy_'s speed on a layer of 1 MB), else index_copy_."""
    ops = _fusable(slots, kv, k_flat, v_flat)
    if ops is not None:
        ops.scatter_rows(kv, k_flat, v_flat, slots)
        return
    kv = kv.to(k_flat.device)
    k_flat.index_copy_(0, slots, kv[0])
    v_flat.index_copy_(0, slots, kv[1])
