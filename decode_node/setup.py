"""Builds the decode role of a node: the KV receiver, the worker and the servicer.

torch transport: the receiver hosts a rendezvous store on --kv-port and prefill nodes reach it
at `advertise_host:port`; grpc transport: it serves the KVTransfer service on the node's own
gRPC server, at the node's address.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Protocol

from splitserve.kvtransfer import KVReceiver, make_receiver, transport_backend
from splitserve.node_api import KVTarget
from splitserve.rpc.server import GrpcServer
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.reporting import TransferMetrics
from decode_node.servicer import DecodeServicer
from decode_node.worker import DecodeWorker
from node.config import NodeConfig


class DecodeMetrics(TransferMetrics, Protocol):
    def watch_kv_receiver(self, receiver: KVReceiver) -> None:
        """Export the receiver's own counters (checksum failures) at each scrape."""


@dataclass(frozen=True)
class DecodeRole:
    servicer: DecodeServicer
    worker: DecodeWorker
    close: Callable[[], None]

    def start(self) -> asyncio.Task:
        """The reaper of reservations whose transfer failed: cancel the task to stop it."""
        return asyncio.get_running_loop().create_task(self.worker.reap_forever())


def build_decode(config: NodeConfig, node_id: str, engine_loop: EngineLoop, server: GrpcServer,
                 metrics: DecodeMetrics, prefix_store: PrefixStore | None = None) -> DecodeRole:
    receiver, kv_address = _receiver(config, server)
    metrics.watch_kv_receiver(receiver)
    target = KVTarget(node_id, kv_address, config.kv.transport, config.engine.kv_dtype)
    worker = DecodeWorker(engine_loop, receiver, target, metrics, config.kv.timeout_s, config.kv.checksum,
                          prefix_store)
    return DecodeRole(DecodeServicer(worker), worker, receiver.close)


def _receiver(config: NodeConfig, server: GrpcServer) -> tuple[KVReceiver, str]:
    transfer = config.kv.transfer_config(config.engine.device)
    if transport_backend(config.kv.transport, config.engine.device)[0] == "grpc":
        return make_receiver("grpc", transfer, grpc_server=server.server), f"{config.advertised_host}:{server.port}"
    receiver = make_receiver("torch", transfer, host=config.host, port=config.kv.kv_port)
    return receiver, f"{config.advertised_host}:{receiver.address.rsplit(':', 1)[1]}"
