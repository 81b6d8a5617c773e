"""Common gRPC server set-up: message limits, malformed requests refused (INVALID_ARGUMENT), health
checking, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitserve.grpc_util import SERVER_OPTIONS, MessageGuard

log = logging.getLogger(__name__)


class GrpcServer:
    """A grpc.aio server with the health service (overall and per service) and reflection."""

    def __init__(self, host: str, port: int, service_names: list[str],
                 credentials: grpc.ServerCredentials | None = None, interceptors: tuple = ()):
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[MessageGuard(), *interceptors])
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = service_names
        reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = f"{host}:{port}"
        self.port = (self.server.add_secure_port(address, credentials) if credentials is not None
                     else self.server.add_insecure_port(address))
        if self.port == 0:
            raise OSError(f"could not bind {host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def _set_health(self, status) -> None:
        for name in ["", *self.service_names]:
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain: report NOT_SERVING, let in-flight calls finish for grace_s, then stop."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)


EXIT_WITH_PARENT_ENV = "SPLITSERVE_EXIT_WITH_PARENT"  # set by procs.spawn for the services it starts


async def _stop_when_orphaned(stop: asyncio.Event, interval_s: float = 1.0) -> None:
    """A service started by a local cluster stops (gracefully) when the process that started it is
    gone, even if that one was killed with SIGKILL and could not stop it."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(interval_s)
    log.warning("the process that started this service (pid %d) is gone: shutting down", parent)
    stop.set()


async def serve_until_signal(server: GrpcServer, on_stop=None, ready_line: str = "", grace_s: float = 5.0) -> None:
    """Serves until SIGINT/SIGTERM; prints ready_line (the READY handshake of procs.spawn) once serving."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(_stop_when_orphaned(stop)) if os.environ.get(EXIT_WITH_PARENT_ENV) else None
    await server.start()
    if ready_line:
        print(ready_line, flush=True)
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    log.info("shutting down (grace %.1fs)", grace_s)
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
