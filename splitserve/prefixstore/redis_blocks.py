"""The prefix store's blocks in Redis. One key per block:

    ss:pb:v1:<model fingerprint>:<KV dtype>:<block size>:<block hash hex>   STRING  the value (chunkcache/format.py)

The block hash chains every token before the block's end and the request's cache salt (block_pool.py), so the key
names the whole prefix. A value is read back only when its header, checksum, model fingerprint, dtype, shape and
positions are this node's (else it is deleted and counted corrupt: recomputed, never trusted). Values are written
with SET NX and the TTL, on a connection of their own; every call is one pipelined round trip
(splitserve/redis_pipe.py: a Redis that does not answer is marked down for a second and costs a request nothing
but the reuse)."""

from __future__ import annotations

import threading

import torch

from splitserve.chunkcache.format import ChunkKV, CorruptValue, decode, encode
from splitserve.redis_pipe import RedisPipe

KEY_PREFIX = "ss:pb:v1"


class RedisBlocks:
    def __init__(self, url: str, fingerprint: bytes, dtype: torch.dtype, block_size: int,
                 layout: tuple[int, int, int], ttl_s: int = 86400, read_timeout_s: float = 5.0,
                 write_timeout_s: float = 30.0):
        # a prompt's blocks are tens of MB: reads may take a second on a busy host (a request waits for them, at
        # most read_timeout_s a socket read, then computes its prompt); writes are off the request's path
        self.pipe = RedisPipe(url, read_timeout_s, connect_timeout_s=1.0)
        self.writes = RedisPipe(url, write_timeout_s, connect_timeout_s=1.0, max_connections=2)
        self.fingerprint, self.dtype, self.block_size, self.layout, self.ttl_s = \
            fingerprint, dtype, block_size, layout, ttl_s
        self.base = f"{KEY_PREFIX}:{fingerprint.hex()}:{str(dtype).removeprefix('torch.')}:{block_size}"
        self._lock = threading.Lock()
        self.counts = {"bytes_read": 0, "bytes_written": 0, "corrupt_values": 0}

    @property
    def marked_down(self) -> bool:
        """A read or a write failed just now: a store would fail too."""
        return self.pipe.marked_down or self.writes.marked_down

    def key(self, block_hash: bytes) -> str:
        return f"{self.base}:{block_hash.hex()}"

    def get(self, hashes: list[bytes], first_index: int) -> list[ChunkKV]:
        """The leading run of these consecutive blocks (the first is block `first_index` of its prompt) that Redis
        holds intact; TierUnavailable when Redis does not answer."""
        blobs = self.pipe.run(lambda p: [p.get(self.key(h)) for h in hashes])
        found = []
        for j, (block_hash, blob) in enumerate(zip(hashes, blobs), first_index):
            if blob is None:
                break
            self._count("bytes_read", len(blob))
            try:
                found.append(self._checked(decode(blob, self.fingerprint), j))
            except CorruptValue:
                self._count("corrupt_values", 1)
                self.pipe.run(lambda p: p.delete(self.key(block_hash)))
                break
        return found

    def _checked(self, kv: ChunkKV, j: int) -> ChunkKV:
        num_layers, n, heads, dim = kv.k.shape
        start = j * self.block_size
        if kv.k.dtype != self.dtype or (num_layers, heads, dim) != self.layout or n != self.block_size:
            raise CorruptValue(f"value is {kv.k.dtype} {tuple(kv.k.shape)}, this node's blocks are {self.dtype} "
                               f"[{self.layout[0]}, {self.block_size}, {self.layout[1]}, {self.layout[2]}]")
        if kv.positions is None or not torch.equal(kv.positions, torch.arange(start, start + n)):
            raise CorruptValue(f"value was not computed at block {j}'s positions")
        return kv

    def missing(self, hashes: list[bytes]) -> list[bool]:
        """Whether each block is absent from Redis (TierUnavailable when Redis does not answer)."""
        return [not n for n in self.writes.run(lambda p: [p.exists(self.key(h)) for h in hashes])]

    def put(self, blocks: list[tuple[bytes, ChunkKV]]) -> None:
        blobs = [(self.key(h), encode(kv, self.fingerprint)) for h, kv in blocks]
        self.writes.run(lambda p: [p.set(key, blob, ex=self.ttl_s, nx=True) for key, blob in blobs])
        self._count("bytes_written", sum(len(blob) for _, blob in blobs))

    def _count(self, name: str, n: int) -> None:
        with self._lock:
            self.counts[name] += n
