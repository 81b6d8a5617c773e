"""A TCP proxy in front of an HTTP server that cuts client connections the way servers do when
they limit requests per keep-alive connection without announcing it.

Each client connection gets its own upstream connection. After `responses_per_connection`
requests on a client connection, the proxy takes the next request and hangs up:
- `cut="close"`: a clean close (FIN) before any byte of the response;
- `cut="reset"`: a reset (RST) before any byte of the response;
- `cut_after_bytes=K` (either cut): the first K bytes of the response pass, then the close.
HTTP/1.1 clients send one request at a time on a connection, so client bytes arriving after
response bytes begin a new request. `num_cuts` counts the hang-ups.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from tests.support.server_thread import ServerThread

CUTS = ("close", "reset")


class CuttingProxy(ServerThread):
    def __init__(self, upstream_port: int, responses_per_connection: int, cut: str = "close",
                 cut_after_bytes: int = 0):
        if cut not in CUTS or responses_per_connection < 0 or cut_after_bytes < 0:
            raise ValueError(f"cut must be one of {CUTS}; counts must be >= 0")
        super().__init__()
        self.upstream_port, self.responses_per_connection = upstream_port, responses_per_connection
        self.cut, self.cut_after_bytes = cut, cut_after_bytes
        self.num_cuts = self.num_connections = 0

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()

    async def _connection(self, client_reader, client_writer) -> None:
        self.num_connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        link = _Link(self, client_writer, up_writer)
        tasks = [asyncio.create_task(link.requests(client_reader)), asyncio.create_task(link.responses(up_reader))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        link.hang_up()


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: CuttingProxy, client_writer, up_writer):
        self.proxy, self.client_writer, self.up_writer = proxy, client_writer, up_writer
        self.num_requests, self.answered, self.cutting = 0, True, False
        self.response_bytes_left = 0

    async def requests(self, reader) -> None:
        while data := await reader.read(65536):
            if self.answered:  # a new request begins
                self.num_requests, self.answered = self.num_requests + 1, False
                if self.num_requests > self.proxy.responses_per_connection:
                    self.proxy.num_cuts += 1
                    self.cutting, self.response_bytes_left = True, self.proxy.cut_after_bytes
                    if not self.response_bytes_left:
                        return
            self.up_writer.write(data)
            await self.up_writer.drain()

    async def responses(self, reader) -> None:
        while data := await reader.read(65536):
            self.answered = True
            if self.cutting:
                data = data[: self.response_bytes_left]
                self.response_bytes_left -= len(data)
            self.client_writer.write(data)
            await self.client_writer.drain()
            if self.cutting and self.response_bytes_left <= 0:
                return

    def hang_up(self) -> None:
        if self.proxy.cut == "reset":
            sock = self.client_writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client_writer.close()
        self.up_writer.close()
