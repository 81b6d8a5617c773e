"""Chunk-cache counters (thread-safe); a node exposes `snapshot()` in its Stats and logs."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class ChunkCacheCounters:
    local_hits: int = 0
    redis_hits: int = 0
    misses: int = 0
    exact_hits: int = 0  # chunks reused from a variant computed after the same tokens (no fix needed)
    redis_errors: int = 0
    corrupt_values: int = 0
    redis_bytes_read: int = 0
    redis_bytes_written: int = 0
    stored_variants: int = 0
    evicted_variants: int = 0
    recorded_variants: int = 0  # live variants: chunks stored as computed inside a request's prompt
    recorded_tokens: int = 0  # prompt tokens forwarded (off the request path) to record them
    blended_requests: int = 0
    blend_time_s: float = 0.0
    prompt_rows: int = 0  # prompt tokens of blended requests
    recomputed_rows: float = 0.0  # rows computed, averaged over layers

    @property
    def recompute_fraction(self) -> float:
        return self.recomputed_rows / self.prompt_rows if self.prompt_rows else 0.0


class Metrics:
    def __init__(self):
        self.counters = ChunkCacheCounters()
        self._lock = threading.Lock()

    def add(self, **deltas) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + delta)

    def snapshot(self) -> dict:
        with self._lock:
            out = asdict(self.counters)
            out["recompute_fraction"] = self.counters.recompute_fraction
        return out
