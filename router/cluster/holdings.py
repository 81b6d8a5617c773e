"""What one node's prefix cache holds, as the router knows it: block hashes (the chain of
splitserve/engine/block_pool.py, which router/cluster/prefix_index.block_hashes computes for a prompt).

Exact where the node reports its blocks (NodeStats.kv_blocks, polled with the health checks: what changed since this
router's last reply, or all it holds after a restart or once its log moved on), so every router replica sees the
same, including what other replicas' requests left there and what the node evicted. The sequences that finish
there are added at once as well (a conversation's next turn often comes before the next poll; the poll after
confirms them or reports them removed). A node that does not report its blocks (an older release) gets those alone:
a guess, kept as an LRU as large as its KV pool.
"""

from __future__ import annotations

from collections import OrderedDict

from splitserve.engine.block_log import BlockChanges


class BlockHoldings:
    def __init__(self) -> None:
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.exact = False  # the node reports its blocks
        self.node_id = ""  # the node instance they came from
        self.seq = 0  # its log's cursor after the last report

    def __len__(self) -> int:
        return len(self._blocks)

    def leading(self, hashes: tuple[bytes, ...]) -> int:
        """How many of a prompt's leading blocks are held (chained: holding block i means holding 0..i)."""
        for i, block_hash in enumerate(hashes):
            if block_hash not in self._blocks:
                return i
        return len(hashes)

    def add(self, hashes: tuple[bytes, ...], capacity: int) -> None:
        """A sequence finished on the node: its blocks are there (a guess kept to `capacity` blocks, oldest out,
        unless the node reports its own)."""
        for block_hash in hashes:
            self._blocks[block_hash] = None
            self._blocks.move_to_end(block_hash)
        while not self.exact and len(self._blocks) > max(capacity, 0):
            self._blocks.popitem(last=False)

    def apply(self, node_id: str, changes: BlockChanges) -> None:
        """The node's report (its Stats); a new instance's or a snapshot replaces all that was known."""
        if changes.snapshot or node_id != self.node_id:
            self._blocks.clear()
        for block_hash in changes.removed:
            self._blocks.pop(block_hash, None)
        for block_hash in changes.stored:
            self._blocks[block_hash] = None
        self.exact, self.node_id, self.seq = True, node_id, changes.seq

    def cursor(self) -> tuple[str, int]:
        """(node instance, seq) to ask the node's changes from."""
        return (self.node_id, self.seq) if self.exact else ("", 0)
