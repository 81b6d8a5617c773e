"""SenderPool: one KV sender per decode node, made on first use and kept."""

from __future__ import annotations

import dataclasses
import threading

import grpc

from splitserve.kvtransfer import KVSender, TransferConfig, make_sender, transport_backend
from splitserve.node_api import KVTarget


class SenderPool:
    def __init__(self, node_id: str, config: TransferConfig, engine_device: str = "cpu",
                 credentials: grpc.ChannelCredentials | None = None):
        self.node_id = node_id
        self.config = config
        self.engine_device = engine_device  # with each decode node's transport, where the sent tensors are
        self.credentials = credentials  # for the gRPC transport under mTLS
        self._senders: dict[tuple[str, str], KVSender] = {}
        self._lock = threading.Lock()

    def get(self, target: KVTarget) -> KVSender:
        """The sender to target's decode node, by the transport it named. ValueError for an unusable
        target (bad input)."""
        backend, device = transport_backend(target.transport, self.engine_device)
        key = (target.transport, target.kv_address)
        with self._lock:
            sender = self._senders.get(key)
            if sender is None:
                extra = {"instance_id": self.node_id} if backend == "torch" else {"credentials": self.credentials}
                config = dataclasses.replace(self.config, device=device)
                sender = self._senders[key] = make_sender(backend, target.kv_address, config, **extra)
            return sender

    def close(self) -> None:
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            sender.close()
