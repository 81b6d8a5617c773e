"""`splitserve router`: builds the router from its flags and serves until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from splitserve.api.v1 import router_pb2, router_pb2_grpc
from splitserve.rpc.server import GrpcServer, serve_until_signal
from splitserve.rpc.logs import setup_logging
from router.front.intake import Frontend
from router.front.security import Security, admission_from_args, http_server
from router.cluster.discovery import start_discovery, static_nodes
from router.cluster.failover import RetryConfig
from router.cluster.health import HealthConfig
from router.cluster.nodes import NodeRegistry
from router.cluster.orchestrator import Orchestrator
from router.cluster.policies import get_policy
from router.front.grpc_servicer import RouterServicer

log = logging.getLogger(__name__)
SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


async def build(args: argparse.Namespace):
    if not args.model:
        raise ValueError("--model is required (the tokenizer and chat template come from it)")
    security = Security.from_args(args)  # issue 4: keys, TLS, mTLS to nodes (router/front/security.py)
    health = HealthConfig(args.health_interval_s, args.health_timeout_s, args.unhealthy_after)  # issue 4: health
    registry = NodeRegistry(health, credentials=security.node_credentials(),
                            channel_options=security.node_channel_options())
    for role, address in static_nodes(args.nodes, args.nodes_file):  # issue 4: discovery (router/cluster/discovery.py)
        registry.add(role, address)
    retry = RetryConfig(args.max_retries, args.retry_backoff_s, max(1.0, args.retry_backoff_s))  # issue 4: failover
    orchestrator = Orchestrator(registry, get_policy(args.policy), retry=retry)
    frontend = Frontend.from_model_dir(args.model)
    admission = admission_from_args(args)  # issue 4: load shedding and deadlines, shared by both fronts
    orchestrator.metrics.set_queue_depth_source(lambda: admission.num_active)  # issue 4: metrics
    server = GrpcServer(args.host, args.port, [SERVICE_NAME], security.server_credentials(),
                        security.grpc_interceptors(admission))
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(frontend, orchestrator), server.server)
    http = http_server(args, frontend, orchestrator, admission, security)  # issue 4: OpenAI HTTP (None: off)
    return server, registry, http


async def main(args: argparse.Namespace) -> None:
    server, registry, http = await build(args)
    discovery = await start_discovery(args.discovery, registry, args.k8s_namespace, args.k8s_selector)  # issue 4
    await registry.refresh()
    registry.start_polling()
    ready = f"READY router grpc://{args.host}:{server.port}"
    if http is not None:  # issue 4: the HTTP server runs in this loop, next to gRPC
        await http.start()
        ready += f" http={http.url}"
    log.info("router listening on %s:%d%s", args.host, server.port, f" and {http.url}" if http else "")

    async def stop() -> None:
        if http is not None:
            await http.stop()
        if discovery is not None:  # issue 4: discovery
            discovery.cancel()
            await asyncio.gather(discovery, return_exceptions=True)
        await registry.close()

    await serve_until_signal(server, stop, ready)


def run_router(args: argparse.Namespace) -> int:
    setup_logging("router")
    try:
        asyncio.run(main(args))
    except (ValueError, KeyError) as exc:
        log.error("%s", exc)
        return 2
    return 0
