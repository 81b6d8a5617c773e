"""uvicorn inside the router's event loop (next to the grpc.aio server), with optional TLS.

The router binds the socket itself, so port -1 (any free port) works and the bound port is
known before serving. uvicorn's own signal handling is off: the router's handler stops both
servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import anyio
import uvicorn

from splitserve.tls import TLSFiles


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # SIGINT/SIGTERM belong to the router's serve_until_signal


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port <= 0: any free port)."""
    family, type_, proto, _, address = socket.getaddrinfo(host, max(port, 0), type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    def __init__(self, app, host: str, port: int, tls: TLSFiles | None = None, grace_s: float = 5.0):
        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.scheme = "https" if tls else "http"
        ssl = {"ssl_certfile": str(tls.cert_path), "ssl_keyfile": str(tls.key_path)} if tls else {}
        config = uvicorn.Config(app, lifespan="off", http="httptools", access_log=False, log_level="warning",
                                timeout_graceful_shutdown=grace_s, **ssl)
        self.server = _Server(config)
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        # FastAPI runs sync dependencies in anyio's threads, whose backend module anyio imports on first
        # use: imported now, a first request that comes while descriptors run out is not a 500.
        await anyio.to_thread.run_sync(lambda: None)
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self.server.should_exit = True
            await self._task
            self._task = None
        self.sock.close()
