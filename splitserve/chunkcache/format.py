"""The chunk-cache value format: a fixed header, then raw tensor bytes per layer. Never pickle.

All integers little-endian. Header (56 bytes, struct `<4sHHIBBHIHH16s8sQ`):

    magic        4s   b"SSKV"
    version      u16  1
    flags        u16  bit 0: K is stored before RoPE (no positions section); bit 1: int8 values;
                      bit 2: the checksum is xxh3-64 (written since 2026-12-07; else blake2b-64, still read)
    header_len   u32  56 (readers skip to it, so later versions may grow the header)
    dtype        u8   KV dtype of the model: 0 float32, 1 bfloat16, 2 float16
    reserved     u8   0
    num_layers   u16  L
    num_tokens   u32  n
    num_kv_heads u16  Hkv
    head_dim     u16  D
    fingerprint  16s  the model fingerprint (keys.model_fingerprint)
    checksum     8s   of the payload: xxh3-64 (flag bit 2) or blake2b-64 (20x slower: 0.1 s for 94 MB here)
    payload_len  u64

Payload: unless K is pre-RoPE, `positions` int64 [n] (the positions K was rotated at); then for
each layer l: K_l [n, Hkv, D], V_l [n, Hkv, D] in `dtype`, or, with int8 values, K_l and V_l
as int8 followed by their per-token scales float32 [n] each (x ~= q * scale, scale = max|x| / 127).
A value whose header, sizes or checksum do not match is `CorruptValue`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import torch
import xxhash

MAGIC = b"SSKV"
VERSION = 1
FLAG_PRE_ROPE = 1
FLAG_INT8 = 2
FLAG_XXH3 = 4
_HEADER = struct.Struct("<4sHHIBBHIHH16s8sQ")
HEADER_BYTES = _HEADER.size
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


class CorruptValue(ValueError):
    """A stored value that cannot be trusted (bad header, size, fingerprint or checksum)."""


@dataclass
class ChunkKV:
    k: torch.Tensor  # [L, n, Hkv, D]
    v: torch.Tensor  # [L, n, Hkv, D]
    positions: torch.Tensor | None  # [n] int64 positions K was rotated at; None: K is pre-RoPE

    @property
    def num_tokens(self) -> int:
        return self.k.shape[1]

    @property
    def num_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def encode(kv: ChunkKV, fingerprint: bytes, quantize: bool = False) -> bytes:
    """The value's bytes. K_l and V_l are read where they lie (a layer's K of a block of the paged KV cache is
    contiguous): the one copy is into the returned bytes."""
    if kv.k.dtype not in DTYPE_CODES:
        raise ValueError(f"KV dtype must be one of float32, bfloat16, float16; got {kv.k.dtype}")
    parts = [] if kv.positions is None else [_raw(kv.positions.to(torch.int64))]
    for layer in range(kv.k.shape[0]):
        for t in (kv.k[layer], kv.v[layer]):
            parts += _quantized(t) if quantize else [_view(t)]
    num_layers, n, heads, dim = kv.k.shape
    flags = (FLAG_PRE_ROPE if kv.positions is None else 0) | (FLAG_INT8 if quantize else 0) | FLAG_XXH3
    hasher = checksum_hasher(flags)
    for part in parts:
        hasher.update(part)
    header = _HEADER.pack(MAGIC, VERSION, flags, HEADER_BYTES, DTYPE_CODES[kv.k.dtype], 0, num_layers, n, heads, dim,
                          fingerprint, hasher.digest(), sum(len(p) for p in parts))
    return b"".join([header, *parts])


def decode(blob: bytes, fingerprint: bytes) -> ChunkKV:
    if len(blob) < HEADER_BYTES:
        raise CorruptValue(f"value is {len(blob)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, flags, header_len, code, _, num_layers, n, heads, dim, fp, checksum, payload_len = \
        _HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION or code not in _CODE_DTYPES:
        raise CorruptValue(f"bad header: magic={magic!r} version={version} dtype code={code}")
    if fp != fingerprint:
        raise CorruptValue("value was computed by another model (fingerprint differs)")
    payload = memoryview(blob)[header_len:]
    if len(payload) != payload_len or _checksum(payload, flags) != checksum:
        raise CorruptValue("payload size or checksum does not match the header")
    dtype = _CODE_DTYPES[code]
    reader = _Reader(payload)
    positions = None if flags & FLAG_PRE_ROPE else reader.tensor(torch.int64, (n,))
    shape = (n, heads, dim)
    if flags & FLAG_INT8:
        layers = [[_read_layer(reader, dtype, shape, True) for _ in range(2)] for _ in range(num_layers)]
        kv = torch.stack([torch.stack(pair) for pair in layers]) if layers else torch.empty((0, 2, *shape), dtype=dtype)
    else:  # K_0, V_0, K_1, ... back to back: one copy, K and V views of it
        kv = reader.tensor(dtype, (num_layers, 2, *shape))
    if reader.offset != len(payload):
        raise CorruptValue("payload longer than its shapes")
    return ChunkKV(kv[:, 0], kv[:, 1], positions)


def _read_layer(reader: "_Reader", dtype: torch.dtype, shape: tuple, int8: bool) -> torch.Tensor:
    if not int8:
        return reader.tensor(dtype, shape)
    q = reader.tensor(torch.int8, shape)
    scale = reader.tensor(torch.float32, shape[:1])
    return (q.float() * scale[:, None, None]).to(dtype)


class _Reader:
    def __init__(self, payload: memoryview):
        self.payload, self.offset = payload, 0

    def tensor(self, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
        count = 1
        for s in shape:
            count *= s
        size = count * torch.empty((), dtype=dtype).element_size()
        if self.offset + size > len(self.payload):
            raise CorruptValue("payload shorter than its shapes")
        raw = bytearray(self.payload[self.offset:self.offset + size])
        self.offset += size
        if not size:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()


def _view(t: torch.Tensor) -> memoryview:
    """t's bytes, without a copy where t is contiguous on CPU (a buffer of the tensor: use it before t changes)."""
    return memoryview(t.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy())


def _quantized(t: torch.Tensor) -> list[bytes]:
    # t: [n, Hkv, D] -> int8 values and a float32 scale per token
    x = t.detach().float().cpu()
    scale = x.abs().amax(dim=(1, 2)).clamp_min(1e-12) / 127.0
    q = torch.round(x / scale[:, None, None]).clamp(-127, 127).to(torch.int8)
    return [_raw(q), _raw(scale)]


def checksum_hasher(flags: int):
    """A fresh hasher of the checksum the flags name (update / digest)."""
    return xxhash.xxh3_64() if flags & FLAG_XXH3 else hashlib.blake2b(digest_size=8)


def _checksum(payload, flags: int) -> bytes:
    hasher = checksum_hasher(flags)
    hasher.update(payload)
    return hasher.digest()
