"""`splitserve node`: the process shell. Builds the engine and the role the config names, serves the
Node service until SIGINT/SIGTERM, then drains.

    prefill: Transfers (the engine loop's step hooks) -> engine loop -> chunk path -> prefill_node/setup.py
    decode:  engine loop -> decode_node/setup.py (KV receiver, worker; a reaper task)
    mixed:   engine loop -> chunk path (Generate, Abort and Stats are node/servicer.py's own)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import uuid

import torch

from splitserve import labels
from splitserve.engine import Engine
from splitserve.prefixstore.node_path import build_prefix_store
from splitserve.rpc.logs import setup_logging
from splitserve.rpc.server import GrpcServer, serve_until_signal
from splitserve.runtime.cpu_share import CpuShare, parse_cpu_share
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.open_files import raise_open_files_limit
from splitserve.runtime.step_log import StepLog
from splitserve.runtime.torch_threads import in_passing_thread, keep_this_thread_serial, serial_executor
from splitserve.tls import TLSFiles
from decode_node.setup import DecodeRole, build_decode
from node.config import NodeConfig
from node.metrics import EngineObserver, NodeMetrics, RpcInterceptor
from node.prefix_metrics import PrefixStoreCollector
from node.servicer import SERVICE_NAME, NodeServicer, Roles
from prefill_node.chunk_metrics import ChunkCacheCollector
from prefill_node.chunks import build_chunk_path
from prefill_node.setup import build_prefill, make_transfers

log = logging.getLogger(__name__)


async def main(config: NodeConfig) -> None:
    torch.set_num_threads(config.threads)  # the engine thread's (see torch_threads.py)
    keep_this_thread_serial()
    asyncio.get_running_loop().set_default_executor(serial_executor())
    engine = await in_passing_thread(Engine, config.model, config.engine)
    await in_passing_thread(engine.grammars.warm)
    node_id = f"{config.role}-{uuid.uuid4().hex[:12]}"
    tls = TLSFiles.load(config.tls_dir, "node") if config.tls_dir else None  # mTLS: only holders of our CA's certs
    metrics = NodeMetrics(config.role)
    server = GrpcServer(config.host, config.port, [SERVICE_NAME], tls.server_credentials(require_client_cert=True)
                        if tls else None, interceptors=(RpcInterceptor(metrics, SERVICE_NAME),))
    transfers = make_transfers(config, engine) if config.role == labels.ROLE_PREFILL else None
    engine_loop = EngineLoop(engine, transfers, EngineObserver(metrics), config.fault_step_delay_s,
                             StepLog.open(config.step_log, node_id) if config.step_log else None,
                             CpuShare(*parse_cpu_share(config.cpu_share), config.threads) if config.cpu_share else None)
    metrics.watch_engine(engine_loop)
    chunk_path = build_chunk_path(config.chunks, config.model, engine_loop)
    if chunk_path is not None:
        metrics.registry.register(ChunkCacheCollector(chunk_path))
    prefix_store = build_prefix_store(config.prefix_store_url, config.prefix_store_ttl_s, config.model, engine_loop,
                                      config.prefix_store_answers)
    if prefix_store is not None:
        metrics.registry.register(PrefixStoreCollector(prefix_store))
    roles, closers, decode = Roles(chunk_path=chunk_path, prefix_store=prefix_store), [], None
    if transfers is not None:
        prefill = build_prefill(config, node_id, engine_loop, transfers, chunk_path, metrics,
                                tls.client_credentials() if tls else None, prefix_store)
        roles, closers = Roles(prefill.servicer, None, chunk_path, (prefill.worker,), prefix_store), [prefill.close]
        if config.fault_signals:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, transfers.arm_drop)
    elif config.role == labels.ROLE_DECODE:
        decode = build_decode(config, node_id, engine_loop, server, metrics, prefix_store)
        roles, closers = Roles(None, decode.servicer, None, (decode.worker,)), [decode.close]
    if prefix_store is not None:
        closers.append(prefix_store.close)
    NodeServicer(node_id, config.role, engine_loop, roles).add_to(server)
    metrics_address = metrics.serve(config.host, config.metrics_port)
    engine_loop.start()
    await _serve(config, server, node_id, engine_loop, closers, decode, metrics_address)


async def _serve(config: NodeConfig, server: GrpcServer, node_id: str, engine_loop: EngineLoop, closers: list,
                 decode: DecodeRole | None, metrics_address: str) -> None:
    reaper = decode.start() if decode is not None else None

    async def shutdown() -> None:
        if reaper is not None:
            reaper.cancel()
        engine_loop.stop()
        for close in closers:
            close()

    kv = f" kv={decode.worker.target.kv_address}" if decode else ""
    kv += f" metrics={metrics_address}" if metrics_address else ""
    log.info("node %s (%s) listening on %s:%d%s", node_id, config.role, config.host, server.port, kv)
    ready = f"READY node grpc://{config.advertised_host}:{server.port} node_id={node_id} role={config.role}{kv}"
    await serve_until_signal(server, shutdown, ready)


def run_node(args: argparse.Namespace) -> int:
    """The entry point (node/cli.py): the flags become a NodeConfig here, once."""
    setup_logging(f"node-{args.role}")
    raise_open_files_limit()  # routers' connections, KV pairs, Redis
    try:
        asyncio.run(main(NodeConfig.from_args(args)))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    return 0
