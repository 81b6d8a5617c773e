"""Builds the prefill role of a node: KV senders, the worker and the servicers.

The Transfers (the engine loop's step hooks) are made before the engine loop, by the node
shell (node/server.py); the chunk path (None when the chunk cache is off) after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import grpc

from splitserve.engine import Engine
from splitserve.prefixstore.node_path import PrefixStore
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.reporting import TransferMetrics
from node.config import NodeConfig
from prefill_node.chunks import ChunkPath
from prefill_node.senders import SenderPool
from prefill_node.servicer import PrefillServicer
from prefill_node.transfers import Transfers
from prefill_node.worker import PrefillWorker


@dataclass(frozen=True)
class PrefillRole:
    servicer: PrefillServicer
    worker: PrefillWorker
    close: Callable[[], None]


def build_prefill(config: NodeConfig, node_id: str, engine_loop: EngineLoop, transfers: Transfers,
                  chunk_path: ChunkPath | None, metrics: TransferMetrics,
                  credentials: grpc.ChannelCredentials | None, prefix_store: PrefixStore | None = None) -> PrefillRole:
    senders = SenderPool(node_id, config.kv.transfer_config(config.engine.device), config.engine.device, credentials)
    worker = PrefillWorker(engine_loop, transfers, senders, chunk_path, metrics, config.kv.one_shot_max_tokens,
                           config.kv.timeout_s, prefix_store)
    return PrefillRole(PrefillServicer(worker), worker, senders.close)


def make_transfers(config: NodeConfig, engine: Engine) -> Transfers:
    return Transfers(engine, config.kv.checksum, config.kv.fault_send_delay_s)
