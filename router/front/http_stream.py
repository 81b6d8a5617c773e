"""Sending a request's text to an HTTP client, whole or as server-sent events.

A client that disconnects cancels its request: `until_disconnect` runs the work next to a
watcher of the ASGI `http.disconnect` message and cancels the work (once, so that its
clean-up still runs: the orchestrator's iterator closes and cancels the node calls) when the
client goes first. `EventStreamResponse` streams under that watcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator, Awaitable

from fastapi.responses import StreamingResponse

from router.front.admission import Slot
from router.front.completion import Finish, Piece
from router.front.http_errors import ClientGone, from_exception
from router.front.openai_format import Shape

log = logging.getLogger(__name__)
DONE = b"data: [DONE]\n\n"


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive, work: Awaitable):
    """`work`'s result, or ClientGone after cancelling it if the client disconnected first."""
    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone()
    return task.result()


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        try:
            await until_disconnect(receive, self.stream_response(send))
        except ClientGone:
            log.info("client disconnected mid-stream")


def _data(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def event_stream(events: AsyncIterator[Piece | Finish], shape: Shape, include_usage: bool,
                       slot: Slot) -> AsyncIterator[bytes]:
    """SSE lines: text chunks, a chunk with the finish reason, usage (when asked), [DONE].

    A failure after the 200 went out becomes an `error` event, then [DONE]."""
    try:
        async for item in events:
            if isinstance(item, Piece):
                yield _data(shape.chunk(item, include_usage))
                continue
            yield _data(shape.final_chunk(item, include_usage))
            if include_usage:
                yield _data(shape.usage_chunk(item))
        yield DONE
    except Exception as exc:
        error = from_exception(exc)
        log.warning("request %s failed mid-stream: %s", shape.id, exc)
        yield _data(error.body())
        yield DONE
    finally:
        await events.aclose()
        slot.release()


async def collect(events: AsyncIterator[Piece | Finish]) -> tuple[list[Piece], Finish]:
    pieces, finish = [], None
    async for item in events:
        if isinstance(item, Piece):
            pieces.append(item)
        else:
            finish = item
    if finish is None:
        raise RuntimeError("the request ended without a finish")
    return pieces, finish
