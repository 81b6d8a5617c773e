"""SenderPool: one KV sender per decode node, made on first use and kept."""

from __future__ import annotations

import threading

import grpc

from splitserve.kvtransfer import BACKENDS, KVSender, TransferConfig, make_sender
from splitserve.node_api import KVTarget


class SenderPool:
    def __init__(self, node_id: str, config: TransferConfig, credentials: grpc.ChannelCredentials | None = None):
        self.node_id = node_id
        self.config = config
        self.credentials = credentials  # for the gRPC transport under mTLS
        self._senders: dict[tuple[str, str], KVSender] = {}
        self._lock = threading.Lock()

    def get(self, target: KVTarget) -> KVSender:
        """The sender to target's decode node. ValueError for an unusable target (bad input)."""
        if target.transport not in BACKENDS:
            raise ValueError(f"KV transport must be one of {', '.join(BACKENDS)}, got {target.transport!r}")
        key = (target.transport, target.kv_address)
        with self._lock:
            sender = self._senders.get(key)
            if sender is None:
                extra = ({"instance_id": self.node_id} if target.transport == "torch"
                         else {"credentials": self.credentials})
                sender = self._senders[key] = make_sender(target.transport, target.kv_address, self.config, **extra)
            return sender

    def close(self) -> None:
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            sender.close()
