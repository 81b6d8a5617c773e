"""A test server on 127.0.0.1 run by its own event loop in a daemon thread."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod


class ServerThread(ABC):
    """Used as a context manager: entering starts the thread and returns once `start()` has
    bound the port; leaving sets `self._stop` (which handlers may await too), then `stop()`."""

    def __init__(self):
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @abstractmethod
    async def start(self) -> int:
        """Bind and serve; return the port."""

    async def stop(self) -> None:
        """Release what start() opened."""

    def __enter__(self):
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.port = await self.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.stop()
