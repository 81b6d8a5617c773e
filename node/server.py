"""`splitserve node`: builds a prefill, decode or mixed node from its flags and serves it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import uuid

import torch

from splitserve import labels
from splitserve.api.v1 import node_pb2, node_pb2_grpc
from splitserve.engine import Engine, EngineConfig
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.rpc.server import GrpcServer, serve_until_signal
from splitserve.rpc.logs import setup_logging
from splitserve.tls import TLSFiles
from node.metrics import NodeMetrics, RpcInterceptor
from node.servicer import NodeServicer

log = logging.getLogger(__name__)
SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["Node"].full_name


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(dtype=args.dtype, device=args.device, block_size=args.block_size, num_blocks=args.num_blocks,
                        kv_cache_bytes=args.kv_cache_bytes, max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_batched_tokens,
                        enable_prefix_caching=not args.no_prefix_caching)


async def main(args: argparse.Namespace) -> None:
    if not args.model:
        raise ValueError("--model is required")
    torch.set_num_threads(args.threads)
    engine = await asyncio.to_thread(Engine, args.model, engine_config(args))
    node_id = f"{args.role}-{uuid.uuid4().hex[:12]}"
    engine_loop = EngineLoop(engine)
    tls = TLSFiles.load(args.tls_dir, "node") if args.tls_dir else None  # mTLS: only holders of our CA's certs
    credentials = tls.server_credentials(require_client_cert=True) if tls else None
    metrics = NodeMetrics(args.role)  # issue 4 metrics: node/metrics.py
    server = GrpcServer(args.host, args.port, [SERVICE_NAME], credentials,
                        interceptors=(RpcInterceptor(metrics, SERVICE_NAME),))
    advertise = args.advertise_host or args.host
    prefill = decode = None
    closers = []
    if args.role == labels.ROLE_PREFILL:
        from node.transport import build_senders

        prefill, close = build_senders(args, engine_loop, node_id, tls.client_credentials() if tls else None)
        engine_loop.make_layer_hook, engine_loop.after_step = prefill.make_layer_hook, prefill.after_step
        closers.append(close)
    elif args.role == labels.ROLE_DECODE:
        from node.transport import build_receiver

        decode, close = build_receiver(args, engine_loop, node_id, server, f"{advertise}:{server.port}")
        closers.append(close)
    chunk_path = None
    if args.role != labels.ROLE_DECODE:
        from node.chunks import build_chunk_path

        chunk_path = build_chunk_path(args, engine_loop)
        if prefill is not None:
            prefill.chunk_path = chunk_path
    servicer = NodeServicer(node_id, args.role, engine_loop, prefill, decode, chunk_path)
    node_pb2_grpc.add_NodeServicer_to_server(servicer, server.server)
    metrics.attach(engine_loop, prefill, decode)
    if chunk_path is not None:
        from node.chunk_metrics import ChunkCacheCollector

        metrics.registry.register(ChunkCacheCollector(chunk_path))
    engine_loop.fault_step_delay_s = args.fault_step_delay_s
    if args.fault_signals and prefill is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, prefill.arm_drop)
    metrics_address = metrics.serve(args.host, args.metrics_port)
    engine_loop.start()
    reaper = asyncio.get_running_loop().create_task(decode.reap_forever()) if decode else None

    async def shutdown() -> None:
        if reaper is not None:
            reaper.cancel()
        engine_loop.stop()
        for close in closers:
            close()

    kv = f" kv={decode.kv_address}" if decode else ""
    kv += f" metrics={metrics_address}" if metrics_address else ""
    log.info("node %s (%s) listening on %s:%d%s", node_id, args.role, args.host, server.port, kv)
    ready = f"READY node grpc://{advertise}:{server.port} node_id={node_id} role={args.role}{kv}"
    await serve_until_signal(server, shutdown, ready)


def run_node(args: argparse.Namespace) -> int:
    setup_logging(f"node-{args.role}")
    try:
        asyncio.run(main(args))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    return 0
