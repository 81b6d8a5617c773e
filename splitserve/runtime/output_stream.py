"""OutputStream: one request's engine outputs, handed from the engine thread to asyncio."""

from __future__ import annotations

import asyncio

from splitserve.engine import RequestOutput
from splitserve.runtime.engine_loop import ENGINE_ERROR


class EngineError(Exception):
    """The engine failed a step that held this request (-> INTERNAL); the node keeps serving."""


class OutputStream:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.get_running_loop()
        self.queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.finished = False

    def sink(self, out: RequestOutput) -> None:
        """Called on the engine thread."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, out)

    async def next(self) -> RequestOutput:
        out = await self.queue.get()
        self.finished = out.finished
        if out.finish_reason == ENGINE_ERROR:
            raise EngineError(f"request {out.request_id} failed inside the engine (see the node's log)")
        return out

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        while not self.finished:
            yield await self.next()


async def run_streaming(engine_loop, request_id: str, admit):
    """Subscribes, admits the request with admit(engine) on the engine thread, and yields its
    outputs until it finishes. If the consumer stops early (client gone), aborts it there.
    ValueError from admit (bad input) propagates before anything is yielded."""
    stream = OutputStream()
    engine_loop.subscribe(request_id, stream.sink)
    try:
        await asyncio.wrap_future(engine_loop.call(admit))
    except BaseException:
        engine_loop.unsubscribe(request_id)
        # cancelled (client gone) while admit waited its turn (it will not run: the reservation it would take
        # is freed) or ran (the request is admitted: stopped); after a ValueError it changes nothing
        engine_loop.call(lambda engine: engine.abort(request_id))
        raise
    try:
        async for out in stream:
            yield out
    finally:
        if not stream.finished:
            engine_loop.unsubscribe(request_id)
            engine_loop.call(lambda engine: engine.abort(request_id))
