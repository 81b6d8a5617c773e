"""What the node workers report to the node's metrics (node/metrics.py implements it)."""

from __future__ import annotations

from typing import Protocol


class TransferMetrics(Protocol):
    def kv_sent(self, num_bytes: int, seconds: float) -> None:
        """A prefill node's transfer confirmed: its bytes, prompt computed -> confirmation."""

    def kv_received(self, num_bytes: int, seconds: float) -> None:
        """A decode node's KV complete: its bytes, Decode call -> KV complete."""
