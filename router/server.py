"""`splitserve router`: builds the router from its flags and serves until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from splitserve.api.v1 import router_pb2, router_pb2_grpc
from splitserve.serving.grpc_server import GrpcServer, serve_until_signal
from splitserve.serving.logs import setup_logging
from router.frontend import Frontend
from router.nodes import NodeRegistry, parse_static_nodes
from router.orchestrator import Orchestrator
from router.policies import get_policy
from router.servicer import RouterServicer

log = logging.getLogger(__name__)
SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


async def build(args: argparse.Namespace) -> tuple[GrpcServer, NodeRegistry]:
    if not args.model:
        raise ValueError("--model is required (the tokenizer and chat template come from it)")
    registry = NodeRegistry()
    for role, address in parse_static_nodes(args.nodes):
        registry.add(role, address)
    orchestrator = Orchestrator(registry, get_policy(args.policy))
    server = GrpcServer(args.host, args.port, [SERVICE_NAME])
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(Frontend.from_model_dir(args.model), orchestrator),
                                                 server.server)
    return server, registry


async def main(args: argparse.Namespace) -> None:
    server, registry = await build(args)
    await registry.refresh()
    registry.start_polling()
    log.info("router listening on %s:%d", args.host, server.port)
    await serve_until_signal(server, registry.close, f"READY router grpc://{args.host}:{server.port}")


def run_router(args: argparse.Namespace) -> int:
    setup_logging("router")
    try:
        asyncio.run(main(args))
    except (ValueError, KeyError) as exc:
        log.error("%s", exc)
        return 2
    return 0
