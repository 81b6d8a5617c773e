"""Layer checksums: a 64-bit hash of a layer's bytes, seeded by (request, layer).

Three algorithms, named on the wire by `ChecksumKind`, so the receiver computes the one the
sender used:

- `MULSUM_64` for CPU tensors where the native kernels are built (`engine.native.kv_ops`): the
  payload as little-endian 64-bit words w_i (the last zero-padded), key_i = key0 + i * GOLDEN
  with key0 = fmix64(seed + GOLDEN), x_i = w_i ^ key_i; products = sum lo32(x_i) * hi32(x_i) and
  words = sum w_i (mod 2**64), then fmix64(fmix64(products ^ seed) + words + nbytes * GOLDEN).
  A changed word always changes `words`; swapped words change `products` through their keys.
  Sums do not depend on the order the words are taken in, so the kernels hash each chunk of a
  layer right after copying it (a prefill node reading the layer out of its pool, a decode node
  writing it in: `pool_copy.py`), chunks on any thread, and the bytes are read once for both.
  `mulsum` below is the torch reference (any device).
- `XXH3_64` for CPU tensors without the native kernels: xxh3-64 (PyPI `xxhash`) over the raw bytes. Measured on this
  project's 2-core CI machine, one core, 8 MB / 34 MB buffers: xxh3-64 24-34 / 6.5-8.6 GB/s,
  CRC32C (`google-crc32c`) 6-16 / 6.6-7.8 GB/s, zlib crc32 2.0-3.2 / 2.0-2.6 GB/s
  (`benchmarks/kv_transfer.py` records them in its results).
- `TORCH_WORDS` for CUDA tensors: a reduction over the int64 words computed with torch ops on
  the tensor's own device, so nothing is copied to the host to hash it:
  sum_i fmix64(word_i + seed + i * GOLDEN) mod 2**64, then fmix64(sum + nbytes). fmix64 is a
  bijection, so changing any single word always changes the sum; swapped words change it
  through their index. Tested on CPU tensors; it has NOT run on a GPU yet.

The seed binds a checksum to its request and layer: a layer delivered in another position, or
another request's layer, fails verification even if its bytes are intact.
"""

from __future__ import annotations

import enum

import torch
import xxhash

from splitserve.engine import native

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E37_79B9_7F4A_7C15
_FMIX_C1, _FMIX_C2 = 0xFF51_AFD7_ED55_8CCD, 0xC4CE_B9FE_1A85_EC53


class ChecksumKind(enum.IntEnum):
    NONE = 0
    XXH3_64 = 1
    TORCH_WORDS = 2
    MULSUM_64 = 3


def to_int64(value: int) -> int:
    """A 64-bit unsigned value as the signed int64 with the same bits (fits a header word)."""
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def layer_seed(request_hash: int, layer: int) -> int:
    return (request_hash * GOLDEN + layer + 1) & MASK64


def kind_for(device: torch.device) -> ChecksumKind:
    """The algorithm a sender uses for a tensor on `device`: on the device itself for CUDA; on
    CPU the one the native kernels fuse into the layer's copies, where they are built."""
    if device.type == "cuda":
        return ChecksumKind.TORCH_WORDS
    return ChecksumKind.MULSUM_64 if native.kv_ops() is not None else ChecksumKind.XXH3_64


def checksum(kind: ChecksumKind, flat: torch.Tensor, seed: int) -> int:
    """The signed-int64 checksum of `flat` (uint8 [nbytes], contiguous) by `kind`."""
    if kind is ChecksumKind.XXH3_64:
        host = flat if flat.device.type == "cpu" else flat.cpu()
        return to_int64(xxhash.xxh3_64_intdigest(host.numpy(), seed))
    if kind is ChecksumKind.TORCH_WORDS:
        return torch_words(flat, seed)
    if kind is ChecksumKind.MULSUM_64:
        ops = native.kv_ops() if flat.device.type == "cpu" else None
        return ops.mulsum(flat, to_int64(seed)) if ops is not None else mulsum(flat, seed)
    raise ValueError(f"no checksum algorithm {kind!r}")


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _fmix64(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _shr(x, 33)
    x = x * to_int64(_FMIX_C1)
    x = x ^ _shr(x, 33)
    x = x * to_int64(_FMIX_C2)
    return x ^ _shr(x, 33)


def _fmix64_int(value: int) -> int:
    value ^= value >> 33
    value = (value * _FMIX_C1) & MASK64
    value ^= value >> 33
    value = (value * _FMIX_C2) & MASK64
    return value ^ (value >> 33)


def _words(flat: torch.Tensor) -> torch.Tensor:
    """uint8 `flat` as int64 words, the last zero-padded."""
    tail = (-flat.numel()) % 8
    if tail:
        flat = torch.cat([flat, flat.new_zeros(tail)])
    return flat.view(torch.int64)


def mulsum(flat: torch.Tensor, seed: int) -> int:
    """`MULSUM_64` of uint8 `flat` with torch ops, where `flat` lives (the reference the native
    kernels are tested against; the receiver's fallback without them)."""
    words = _words(flat)
    keys = torch.arange(words.numel(), dtype=torch.int64, device=flat.device) * to_int64(GOLDEN)
    mixed = words ^ (keys + to_int64(_fmix64_int((seed + GOLDEN) & MASK64)))
    products = int(((mixed & 0xFFFF_FFFF) * _shr(mixed, 32)).sum().item()) & MASK64
    total = int(words.sum().item()) & MASK64
    value = _fmix64_int((_fmix64_int(products ^ (seed & MASK64)) + total + flat.numel() * GOLDEN) & MASK64)
    return to_int64(value)


def torch_words(flat: torch.Tensor, seed: int) -> int:
    """`TORCH_WORDS` of uint8 `flat`, computed where `flat` lives (one int copied back)."""
    nbytes = flat.numel()
    words = _words(flat)  # [ceil(nbytes / 8)]
    index = torch.arange(words.numel(), dtype=torch.int64, device=flat.device)
    mixed = _fmix64(words + index * to_int64(GOLDEN) + to_int64(seed))
    total = int(mixed.sum().item()) & MASK64
    return to_int64(_fmix64_int((total + nbytes) & MASK64))
