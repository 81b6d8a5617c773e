"""Which node probably holds a prompt's prefix: an LRU of the block hashes the router routed.

Nodes cache KV by chained hashes of full blocks (splitserve/engine/block_pool.py): equal hash
at block i means an equal prefix up to block i. The router computes the same hashes and
remembers, per hash, the node it last sent that prefix to. A node's match for a prompt is its
longest run of leading hashes in the index: a guess (the node may have evicted the blocks),
which is all a routing score needs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from splitserve.engine.block_pool import NO_HASH, block_hashes


class PromptHashes:
    """A prompt's block hashes (block_pool.block_hashes, as the nodes' block pools compute them), computed once per
    block size and root (block_pool.kv_root) however many routing steps ask for them."""

    def __init__(self, token_ids: Sequence[int]):
        self.token_ids = token_ids
        self._hashes: dict[tuple[int, bytes], tuple[bytes, ...]] = {}

    def blocks(self, block_size: int, root: bytes = NO_HASH) -> tuple[bytes, ...]:
        key = (block_size, root)
        if key not in self._hashes:
            self._hashes[key] = block_hashes(self.token_ids, block_size, root)
        return self._hashes[key]

    def extended(self, more: Sequence[int], block_size: int, root: bytes = NO_HASH) -> tuple[bytes, ...]:
        """The block hashes of the prompt followed by `more`, hashing only what follows the prompt's full blocks."""
        head = self.blocks(block_size, root)
        tail = list(self.token_ids[len(head) * block_size:]) + list(more)
        return head + block_hashes(tail, block_size, head[-1] if head else root)


class PrefixIndex:
    def __init__(self, capacity: int = 65536):
        if capacity < 1:
            raise ValueError(f"prefix index capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._owner: OrderedDict[bytes, str] = OrderedDict()  # block hash -> node address

    def __len__(self) -> int:
        return len(self._owner)

    def matched_blocks(self, hashes: tuple[bytes, ...]) -> dict[str, int]:
        """address -> number of leading blocks of the prompt last routed there."""
        matched: dict[str, int] = {}
        for i, h in enumerate(hashes):
            owner = self._owner.get(h)
            if owner is None:
                break
            matched[owner] = i + 1  # chained: holding block i means holding blocks 0..i
        return matched

    def record(self, hashes: tuple[bytes, ...], address: str) -> None:
        for h in hashes:
            self._owner[h] = address
            self._owner.move_to_end(h)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)
