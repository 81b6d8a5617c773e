"""`splitserve router`: the process shell. Builds the router from its config and serves gRPC (and the
OpenAI HTTP API, in the same event loop) until SIGINT/SIGTERM.

    cluster control: NodeRegistry (static nodes or Kubernetes discovery, health) -> Orchestrator (policy, retries)
    front door:      Frontend (intake) + Admission + Security -> RouterServicer (gRPC) and the HTTP app
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from splitserve.rpc.logs import setup_logging
from splitserve.rpc.server import GrpcServer, serve_until_signal
from splitserve.runtime.open_files import LOW, AcceptErrorLog, raise_open_files_limit
from router.cluster.discovery import start_discovery, static_nodes
from router.cluster.nodes import NodeRegistry
from router.cluster.orchestrator import Orchestrator
from router.cluster.policies import get_policy
from router.config import RouterConfig
from router.front.admission import Admission
from router.front.grpc_servicer import SERVICE_NAME, RouterServicer
from router.front.intake import Frontend
from router.front.security import Security, make_admission
from router.metrics import ROUTER

log = logging.getLogger(__name__)


async def build(config: RouterConfig):
    security = Security.load(config.security)
    registry = NodeRegistry(config.health, credentials=security.node_credentials(),
                            channel_options=security.node_channel_options())
    for role, address in static_nodes(config.nodes, config.nodes_file):
        registry.add(role, address)
    orchestrator = Orchestrator(registry, get_policy(config.policy), retry=config.retry,
                                max_local_prefill_tokens=config.max_local_prefill_tokens,
                                decode_affinity=config.decode_affinity,
                                decode_affinity_slack=config.decode_affinity_slack)
    frontend = Frontend.from_model_dir(config.model, config.generation_config, config.embedding_pooling)
    if frontend.sampling_defaults:
        log.info("OpenAI API sampling defaults from the model's generation config: %s (--generation-config none: "
                 "OpenAI's)", frontend.sampling_defaults)
    frontend.grammars.warm()
    frontend.salt_per_caller = security.cache_salt_per_key
    admission = make_admission(config.admission)  # load shedding and deadlines, shared by both fronts
    orchestrator.metrics.set_queue_depth_source(lambda: admission.num_active)
    server = GrpcServer(config.host, config.port, [SERVICE_NAME], security.server_credentials(),
                        security.grpc_interceptors(admission))
    RouterServicer(frontend, orchestrator, security.api_keys).add_to(server)
    http = http_server(config, frontend, orchestrator, admission, security)
    return server, registry, http


def http_server(config: RouterConfig, frontend: Frontend, orchestrator: Orchestrator, admission: Admission,
                security: Security):
    """The OpenAI-compatible HTTP server (not started), or None with --http-port 0."""
    if config.http_port == 0:
        return None
    from router.front.http_api import HttpContext, create_app
    from router.front.http_server import HttpServer

    from router.front.responses_store import RedisResponseStore, ResponseStore

    files, batches = batch_stores(config)
    responses = ResponseStore() if config.responses_store == "memory" else \
        RedisResponseStore(config.responses_store, config.responses_ttl_s)
    context = HttpContext(frontend, orchestrator, admission, security.api_keys, config.model_name,
                          config.max_request_bytes, ROUTER.count_error, responses, model_aliases=config.model_aliases,
                          count_http=lambda *labels: ROUTER.http_requests.labels(*labels).inc(),
                          files=files, batches=batches, allow_runtime_lora=config.allow_runtime_lora,
                          runtime_loras=runtime_loras(config, orchestrator))
    server = HttpServer(create_app(context), config.host, config.http_port, security.tls,
                        read_timeout_s=config.http_read_timeout_s)
    server.on_start.append(batches.start_sweeping)  # batches whose router stopped run on without being asked for
    server.on_stop.append(batches.stop_sweeping)
    return server


def runtime_loras(config: RouterConfig, orchestrator: Orchestrator):
    """With --allow-runtime-lora, the adapters loaded at runtime over --lora-store, reconciled from the start (a
    replica that loaded nothing itself still puts the shared ones back on nodes that restart)."""
    if not config.allow_runtime_lora:
        return None
    from router.cluster.lora_admin import LOAD_TIMEOUT_S, RuntimeAdapters
    from router.cluster.lora_store import lora_store

    return RuntimeAdapters(orchestrator.registry, LOAD_TIMEOUT_S, lora_store(config.lora_store))


def batch_stores(config: RouterConfig):
    """The Files API's store and the Batch API's batches, in memory or in Redis (--batch-store)."""
    from router.front.batch_files import FileStore, RedisFileStore
    from router.front.batch_store import RedisBatchStore
    from router.front.batches import Batches

    if config.batch_store == "memory":
        files, store = FileStore(config.batch_storage_bytes), None
    else:
        url = config.batch_store
        files, store = RedisFileStore(url, config.batch_storage_bytes), RedisBatchStore(url, config.batch_claim_s)
    batches = Batches(files, config.batch_concurrency, config.batch_priority, store,
                      count_line=lambda outcome: ROUTER.batch_lines.labels(outcome).inc())
    ROUTER.batches_running.set_function(lambda: batches.num_running)
    return files, batches


async def main(config: RouterConfig) -> None:
    asyncio.get_running_loop().set_exception_handler(AcceptErrorLog(ROUTER.accept_errors.inc))
    server, registry, http = await build(config)
    discovery = await start_discovery(config.discovery, registry, config.k8s_namespace, config.k8s_selector)
    await registry.refresh()
    registry.start_polling()
    ready = f"READY router grpc://{config.host}:{server.port}"
    if http is not None:  # the HTTP server runs in this loop, next to gRPC
        await http.start()
        ready += f" http={http.url}"
    log.info("router listening on %s:%d%s", config.host, server.port, f" and {http.url}" if http else "")

    async def stop() -> None:
        if http is not None:
            await http.stop()
        if discovery is not None:
            discovery.cancel()
            await asyncio.gather(discovery, return_exceptions=True)
        await registry.close()

    await serve_until_signal(server, stop, ready)


def run_router(args: argparse.Namespace) -> int:
    """The entry point (router/cli.py): the flags become a RouterConfig here, once."""
    setup_logging("router")
    open_files = raise_open_files_limit()
    if open_files < LOW:
        log.warning("open-files limit %d (hard limit reached): a burst of more simultaneous connections than "
                    "that waits in the listen queue; raise it (ulimit -n) to %d or more", open_files, LOW)
    try:
        asyncio.run(main(RouterConfig.from_args(args)))
    except (ValueError, KeyError) as exc:
        log.error("%s", exc)
        return 2
    return 0
