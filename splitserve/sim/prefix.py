"""A node's prefix cache, at the granularity of Mooncake's 512-token hash blocks: an LRU of
the blocks the node computed, as big as its KV pool. A request hits the leading run of its
`hash_ids` found there (the engine's BlockPool matches leading blocks by chained hash)."""

from __future__ import annotations

from collections import OrderedDict

BLOCK_TOKENS = 512


class PrefixCache:
    def __init__(self, capacity_tokens: int):
        self.capacity = max(1, capacity_tokens // BLOCK_TOKENS)
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def held_tokens(self, req) -> int:
        """Tokens of req's prompt found cached (nothing changes)."""
        hits = 0
        for h in req.hash_ids:
            if h not in self.blocks:
                break
            hits += 1
        return min(hits * BLOCK_TOKENS, req.prompt_tokens)

    def hit_tokens(self, req) -> int:
        """Tokens of req's prompt found cached; then its blocks become the most recent."""
        if not req.hash_ids:
            return 0
        held = self.held_tokens(req)
        for h in req.hash_ids:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return held
