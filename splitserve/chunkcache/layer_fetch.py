"""Layer-wise loading of chunk KV from Redis, overlapped with the blended prefill (CacheBlend's pipelining).

The stored value is format.py's, unchanged: header, positions, then K_l, V_l of each layer in
order, so layer l of a value is one byte range (GETRANGE). `start()` (the planning thread)
reads every chosen value's header and positions in one round trip and checks them as decode()
does (magic, version, fingerprint, dtype, shapes, lengths); a background thread then reads
layer 0, 1, ... of all values, one round trip per layer, while the engine thread computes
the layers before. `layer(l)` waits for layer l only.

The checksum covers the whole payload: it is hashed as the layers arrive and checked after the
last one. `wait()` returns once every layer is in and verified, or raises CorruptValue (the
value is deleted) or TierUnavailable; nothing computed from the layers may leave the node
before `wait()` returned (ChunkCache.blend holds layer-wise sends back until then).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch

from splitserve.chunkcache.format import (_CODE_DTYPES, _HEADER, FLAG_INT8, FLAG_PRE_ROPE, HEADER_BYTES, MAGIC,
                                          VERSION, ChunkKV, CorruptValue, _Reader, _read_layer, checksum_hasher)
from splitserve.chunkcache.redis_tier import RedisTier
from splitserve.chunkcache.tiers import VariantKey
from splitserve.chunkcache.variants import VariantMeta
from splitserve.runtime.torch_threads import serially

LayerKV = tuple[torch.Tensor, torch.Tensor]  # K_l, V_l: [n, Hkv, D]


@dataclass
class _Value:
    key: VariantKey
    shape: tuple[int, int, int]  # (n, Hkv, D)
    dtype: torch.dtype
    int8: bool
    positions: torch.Tensor | None
    first_byte: int  # offset of layer 0
    layer_bytes: int
    checksum: bytes
    hasher: object  # format.checksum_hasher of the value's flags


@dataclass
class PendingKV:
    """One chunk's KV arriving layer by layer (stands for a ChunkKV in a PlacedChunk)."""
    fetch: "LayerwiseFetch"
    index: int
    num_tokens: int
    positions: torch.Tensor | None

    def layer(self, i: int) -> LayerKV:
        return self.fetch.layer(i)[self.index]


class LayerwiseFetch:
    def __init__(self, tier: RedisTier, on_complete: Callable[["LayerwiseFetch"], None] | None = None):
        """on_complete(self): called on the fetch thread once every value is verified (`whole()` then
        assembles a value's ChunkKV, for promotion to a faster tier)."""
        self.tier, self.on_complete = tier, on_complete
        self.num_layers = 0
        self._values: list[_Value] = []
        self._layers: list[list[LayerKV]] = []
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._done = False

    def start(self, metas: list[VariantMeta]) -> dict[VariantKey, PendingKV]:
        """Reads and checks the headers (one round trip), starts the layer thread; -> the values found."""
        keys = [(m.chunk, m.variant_id) for m in metas]
        heads = self.tier.heads(keys, [HEADER_BYTES + 8 * m.num_tokens for m in metas])
        for key, meta, (length, head) in zip(keys, metas, heads):
            if length == 0:
                self.tier.delete(key)  # evicted by Redis: drop the orphan metadata
                continue
            try:
                self._values.append(self._parse(key, meta.num_tokens, length, head))
            except CorruptValue:
                self.tier.num_corrupt += 1
                self.tier.delete(key)
        if not self._values:
            self._done = True
            return {}
        threading.Thread(target=serially(self._run), name="chunk-layer-fetch", daemon=True).start()
        return {v.key: PendingKV(self, i, v.shape[0], v.positions) for i, v in enumerate(self._values)}

    def _parse(self, key: VariantKey, n: int, length: int, head: bytes) -> _Value:
        if len(head) < HEADER_BYTES:
            raise CorruptValue("value shorter than its header")
        magic, version, flags, header_len, code, _, num_layers, count, heads, dim, fp, checksum, payload_len = \
            _HEADER.unpack_from(head)
        if magic != MAGIC or version != VERSION or code not in _CODE_DTYPES or header_len != HEADER_BYTES:
            raise CorruptValue(f"bad header: magic={magic!r} version={version} dtype code={code}")
        if fp != self.tier.fingerprint or count != n or header_len + payload_len != length:
            raise CorruptValue("fingerprint, token count or length does not match the metadata")
        dtype, int8 = _CODE_DTYPES[code], bool(flags & FLAG_INT8)
        self.tier.check_layout(dtype, (num_layers, heads, dim))
        if self.num_layers not in (0, num_layers):
            raise CorruptValue("values of one request differ in their number of layers")
        self.num_layers = num_layers
        pos_bytes = 0 if flags & FLAG_PRE_ROPE else 8 * n
        per_tensor = n * heads * dim * (1 if int8 else dtype.itemsize) + (4 * n if int8 else 0)
        if pos_bytes + num_layers * 2 * per_tensor != payload_len:
            raise CorruptValue("payload length does not match its shapes")
        value = _Value(key, (n, heads, dim), dtype, int8, None, header_len + pos_bytes, 2 * per_tensor, checksum,
                       checksum_hasher(flags))
        if pos_bytes:
            raw = head[header_len:header_len + pos_bytes]
            value.hasher.update(raw)
            value.positions = _Reader(memoryview(raw)).tensor(torch.int64, (n,))
        return value

    def _run(self) -> None:
        try:
            for layer in range(self.num_layers):
                self._read_layer(layer)
            bad = [v.key for v in self._values if v.hasher.digest() != v.checksum]
            for key in bad:  # counted once, by whoever receives the CorruptValue (runner.py)
                self.tier.delete(key)
            if bad:
                raise CorruptValue(f"payload checksum does not match the header for {len(bad)} value(s)")
            if self.on_complete is not None:
                self.on_complete(self)
        except BaseException as exc:  # handed to the engine thread by layer() / wait()
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _read_layer(self, layer: int) -> None:
        spans = [(v.key, v.first_byte + layer * v.layer_bytes, v.first_byte + (layer + 1) * v.layer_bytes)
                 for v in self._values]
        out = []
        for v, blob in zip(self._values, self.tier.ranges(spans)):
            if len(blob) != v.layer_bytes:
                raise CorruptValue("value changed or vanished while it was read")
            v.hasher.update(blob)
            reader = _Reader(memoryview(blob))
            out.append((_read_layer(reader, v.dtype, v.shape, v.int8), _read_layer(reader, v.dtype, v.shape, v.int8)))
        with self._cond:
            self._layers.append(out)
            self._cond.notify_all()

    def layer(self, i: int) -> list[LayerKV]:
        """Engine thread: layer i of every value, in start() order; waits for it."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._layers) > i or self._done)
            if len(self._layers) <= i:
                raise self._error or CorruptValue(f"layer {i} was never read")
            return self._layers[i]

    def wait(self) -> None:
        """Every layer read and every checksum verified; raises the fetch's error otherwise."""
        with self._cond:
            self._cond.wait_for(lambda: self._done)
        if self._error is not None:
            raise self._error

    @property
    def done(self) -> bool:
        return self._done

    @property
    def keys(self) -> list[VariantKey]:
        return [v.key for v in self._values]

    def whole(self, key: VariantKey) -> ChunkKV:
        """One value's KV [L, n, Hkv, D], once every layer is in."""
        i = self.keys.index(key)
        return ChunkKV(torch.stack([layer[i][0] for layer in self._layers]),
                       torch.stack([layer[i][1] for layer in self._layers]), self._values[i].positions)
