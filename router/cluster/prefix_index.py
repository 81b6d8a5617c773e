"""Which node probably holds a prompt's prefix: an LRU of the block hashes the router routed.

Nodes cache KV by chained hashes of full blocks (splitserve/engine/block_pool.py): equal hash
at block i means an equal prefix up to block i. The router computes the same hashes and
remembers, per hash, the node it last sent that prefix to. A node's match for a prompt is its
longest run of leading hashes in the index: a guess (the node may have evicted the blocks),
which is all a routing score needs.
"""

from __future__ import annotations

from collections import OrderedDict

from splitserve.engine.block_pool import NO_HASH, chain_hash


def block_hashes(token_ids: list[int], block_size: int, root: bytes = NO_HASH) -> tuple[bytes, ...]:
    """Chained hashes of the full blocks of token_ids, as the nodes' block pools compute them (from `root`:
    a cache salt's, block_pool.root_hash)."""
    hashes, parent = [], root
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = chain_hash(parent, token_ids[start:start + block_size])
        hashes.append(parent)
    return tuple(hashes)


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
