"""uvicorn inside the router's event loop (next to the grpc.aio server), with optional TLS.

The router binds the socket itself, so port -1 (any free port) works and the bound port is
known before serving. uvicorn's own signal handling is off: the router's handler stops both
servers. A request must arrive whole (headers and body) within `read_timeout_s` of its connection
opening or of the previous response ending, or the connection is closed: uvicorn has no such
timeout, and a client that connected and sent nothing, or a header a byte at a time, held its
connection (and a file descriptor) for ever (slowloris).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import anyio
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from splitserve.tls import TLSFiles


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # SIGINT/SIGTERM belong to the router's serve_until_signal


class _ReadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on each request's arrival (`read_timeout_s`)."""

    read_timeout_s = 30.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()  # the request is all here: its handler and response take as long as they take
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = self.cycle is None or self.cycle.response_complete  # else a pipelined request runs now
        if idle and not self.transport.is_closing():
            self._arm()  # the next request on this connection (uvicorn's keep-alive timeout covers silence only)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


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
    def __init__(self, app, host: str, port: int, tls: TLSFiles | None = None, grace_s: float = 5.0,
                 read_timeout_s: float = _ReadDeadlineProtocol.read_timeout_s):
        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.scheme = "https" if tls else "http"
        ssl = {"ssl_certfile": str(tls.cert_path), "ssl_keyfile": str(tls.key_path)} if tls else {}
        protocol = type("ReadDeadlineProtocol", (_ReadDeadlineProtocol,), {"read_timeout_s": read_timeout_s})
        config = uvicorn.Config(app, lifespan="off", http=protocol, access_log=False, log_level="warning",
                                timeout_graceful_shutdown=grace_s, **ssl)
        self.server = _Server(config)
        self._task: asyncio.Task | None = None
        self.on_start: list[Callable[[], None]] = []  # background work that runs while it serves, started ...
        self.on_stop: list[Callable[[], Awaitable]] = []  # ... and stopped with it

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
        for start in self.on_start:
            start()

    async def stop(self) -> None:
        for stop in self.on_stop:
            await stop()
        if self._task is not None:
            self.server.should_exit = True
            await self._task
            self._task = None
        self.sock.close()

