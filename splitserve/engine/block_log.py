"""What a block pool's prefix cache gained and lost, for the routers (NodeStats.kv_blocks).

A numbered log of the block hashes the pool started or stopped holding, the last `capacity` of them kept: a router
that polls Stats every half second gets only the hashes touched since its last reply (each one's state now), and
everything the pool holds when it is new, when the node restarted or when the log has moved past its cursor. Lives
on the engine thread, like the pool it belongs to.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice

MAX_REPORTED_BLOCKS = 65536  # a reply's hashes (about 1.2 MB): a larger snapshot keeps the newest


@dataclass(frozen=True)
class BlockChanges:
    snapshot: bool  # `stored` is all the pool holds (the newest MAX_REPORTED_BLOCKS): forget the rest
    stored: tuple[bytes, ...]
    removed: tuple[bytes, ...]
    seq: int  # the cursor of the next request


class BlockLog:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"block log capacity must be >= 1, got {capacity}")
        self.seq = 0
        self._touched: deque[tuple[int, bytes]] = deque(maxlen=capacity)
        self._forgotten_through = 0  # the seq of the last entry the log let go of

    def touch(self, block_hash: bytes) -> None:
        """`block_hash` was stored or removed (the pool says which, when asked)."""
        if len(self._touched) == self._touched.maxlen:
            self._forgotten_through = self._touched[0][0]
        self.seq += 1
        self._touched.append((self.seq, block_hash))

    def changes(self, after: int, held: dict[bytes, int]) -> BlockChanges:
        """What changed since `after` (a cursor this log handed out; 0: since the start), or a snapshot of `held`
        when the log cannot say (or a snapshot is smaller)."""
        if self._forgotten_through <= after <= self.seq:
            touched = set()
            for seq, block_hash in reversed(self._touched):
                if seq <= after:
                    break
                touched.add(block_hash)
            if len(touched) <= min(len(held), MAX_REPORTED_BLOCKS):
                stored = tuple(h for h in touched if h in held)
                return BlockChanges(False, stored, tuple(h for h in touched if h not in held), self.seq)
        newest = tuple(islice(reversed(held), MAX_REPORTED_BLOCKS))
        return BlockChanges(True, newest[::-1], (), self.seq)
