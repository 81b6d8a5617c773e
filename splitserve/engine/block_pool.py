"""KV block pool: hands out block ids, counts references, and caches full blocks by prefix hash.

A full block's hash chains the hash of the block before it with its own token ids, so equal
hashes mean equal prefixes. Freed blocks keep their hash and go to the back of the free
queue: a later request with the same prefix can revive them, and allocation evicts from the
front (least recently freed first).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from splitserve.engine.block_log import BlockChanges, BlockLog

NO_HASH = b""


def root_hash(cache_salt: str | None) -> bytes:
    """Where a prompt's hash chain starts: NO_HASH, or its cache salt's own root (vLLM's cache_salt: prompts under
    different salts never share cached blocks, so one tenant cannot time another's cached prefixes)."""
    return NO_HASH if not cache_salt else hashlib.blake2b(b"cache-salt:" + cache_salt.encode(), digest_size=16).digest()


def kv_root(namespace: str | None, adapter_load_id: str | None = None) -> bytes:
    """Where a request's hash chain starts: its KV namespace's root (SamplingParams.kv_namespace) and, with a LoRA
    adapter, that of the adapter as loaded (LoraAdapter.load_id: one loaded again under the name shares nothing)."""
    return root_hash(namespace if adapter_load_id is None else f"{namespace}\x1f{adapter_load_id}")


def chain_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """The hash of a block holding token_ids after the prefix whose last block hashed to `parent`."""
    return _chained(parent, _token_bytes(token_ids))


def block_hashes(token_ids: Sequence[int], block_size: int, root: bytes = NO_HASH) -> tuple[bytes, ...]:
    """Chained hashes of the full blocks of token_ids from `root` (each as chain_hash), the whole run packed once."""
    end = len(token_ids) - len(token_ids) % block_size
    data, step = memoryview(_token_bytes(token_ids[:end])), 4 * block_size
    hashes, parent = [], root
    for start in range(0, 4 * end, step):
        parent = _chained(parent, data[start:start + step])
        hashes.append(parent)
    return tuple(hashes)


def _token_bytes(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32s (struct.error for one outside [0, 2**32))."""
    return struct.pack(f"<{len(token_ids)}I", *token_ids)


def _chained(parent: bytes, data) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(data)
    return h.digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes = NO_HASH
    token_ids: list[int] = field(default_factory=list)


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.log = BlockLog(max(1024, 2 * num_blocks))  # for the routers: what `cached` gained and lost

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def allocate(self, n: int) -> list[int] | None:
        """n fresh blocks (ref count 1), evicting cached free blocks oldest first; None if short."""
        if n > len(self.free):
            return None
        ids = [self._take_free() for _ in range(n)]
        for block_id in ids:
            self._forget_hash(self.blocks[block_id])
            self.blocks[block_id].ref_count = 1
        return ids

    def lookup_prefix(self, token_ids: list[int], root: bytes = NO_HASH) -> list[int]:
        """Ids of cached blocks holding the longest full-block prefix of token_ids (no refs taken); `root`: where
        the hash chain starts (root_hash)."""
        if not self.enable_prefix_caching:
            return []
        found, parent = [], root
        for start in range(0, len(token_ids) - self.block_size + 1, self.block_size):
            chunk = token_ids[start:start + self.block_size]
            parent = chain_hash(parent, chunk)
            block_id = self.cached.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            found.append(block_id)
        return found

    def acquire(self, block_ids: list[int]) -> None:
        """Take a reference on cached blocks (reviving free ones)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1

    def release(self, block_ids: list[int]) -> None:
        """Drop one reference each; blocks at zero go to the back of the free queue."""
        for block_id in reversed(block_ids):  # tail blocks are evicted before shared prefixes
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} released with ref_count {block.ref_count}")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None

    def register_full(self, block_id: int, parent_hash: bytes, token_ids: list[int]) -> bytes:
        """Record that block_id now holds token_ids after the prefix parent_hash; returns its hash."""
        block_hash = chain_hash(parent_hash, token_ids)
        if self.enable_prefix_caching:
            block = self.blocks[block_id]
            self._forget_hash(block)
            block.hash, block.token_ids = block_hash, list(token_ids)
            if block_hash not in self.cached:
                self.cached[block_hash] = block_id
                self.log.touch(block_hash)
        return block_hash

    def changes(self, after: int) -> BlockChanges:
        """The cached blocks stored and removed since the log's cursor `after` (block_log.py)."""
        return self.log.changes(after, self.cached)

    def check_integrity(self) -> None:
        used = sum(1 for b in self.blocks if b.ref_count > 0)
        free_ok = all(self.blocks[i].ref_count == 0 for i in self.free)
        if used + len(self.free) != self.num_blocks or not free_ok:
            raise RuntimeError(f"block pool corrupt: used {used} + free {len(self.free)} != {self.num_blocks}")
        for block_hash, block_id in self.cached.items():
            if self.blocks[block_id].hash != block_hash:
                raise RuntimeError(f"block pool corrupt: hash map points block {block_id} at a stale hash")

    def _take_free(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        return block_id

    def _forget_hash(self, block: Block) -> None:
        if block.hash and self.cached.get(block.hash) == block.block_id:
            del self.cached[block.hash]
            self.log.touch(block.hash)
        block.hash, block.token_ids = NO_HASH, []
