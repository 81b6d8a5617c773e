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
from typing import AsyncIterator, Awaitable, Callable

from fastapi.responses import StreamingResponse

from router.front.admission import Slot
from router.front.completion import Finish, Piece
from router.front.http_errors import ClientGone, from_exception
from router.front.openai_format import Shape, usage

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


async def event_stream(events: AsyncIterator[tuple[int, Piece | Finish]], shapes: list[Shape], include_usage: bool,
                       slots: list[Slot], continuous_usage: bool = False) -> AsyncIterator[bytes]:
    """SSE lines: text chunks (each choice's under its index), each choice's chunk with its finish reason,
    usage over all choices (when asked), [DONE]. `events` is `numbered()`'s. `continuous_usage` (vLLM's
    continuous_usage_stats): every chunk's `usage` is its choice's so far.

    A failure after the 200 went out becomes an `error` event, then [DONE]."""
    finishes: dict[int, Finish] = {}
    generated = [0] * len(shapes)  # tokens each choice has generated so far
    try:
        async for index, item in events:
            shape = shapes[index]
            if isinstance(item, Piece):
                generated[index] += len(shape.generated_ids(item))
                chunk = shape.chunk(item, include_usage)
            else:
                chunk, finishes[index] = shape.final_chunk(item, include_usage), item
            if chunk is not None:
                if continuous_usage:
                    chunk["usage"] = {"prompt_tokens": shape.num_prompt_tokens, "completion_tokens": generated[index],
                                      "total_tokens": shape.num_prompt_tokens + generated[index]}
                yield _data(chunk)
        if include_usage:
            yield _data(shapes[0].usage_chunk(usage(shapes, [finishes[i] for i in range(len(shapes))])))
        yield DONE
    except Exception as exc:
        error = from_exception(exc)
        log.warning("request %s failed mid-stream: %s", shapes[0].id, exc)
        yield _data(error.body())
        yield DONE
    finally:
        await events.aclose()
        for slot in slots:
            slot.release()


def _event(event: dict) -> bytes:
    """A named event (the Responses and Messages APIs): `event:` its type, then its data."""
    return b"event: " + event["type"].encode() + b"\n" + _data(event)


async def response_stream(events: AsyncIterator[tuple[int, Piece | Finish]], writer, slots: list[Slot],
                          on_done: Callable[[dict], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
    """The named events of one request of the Responses API (responses_format.ResponseWriter) or of
    Anthropic's Messages API (anthropic_format.MessageWriter); `on_done` gets the finished response. A
    failure after the 200 went out becomes the writer's error events."""
    try:
        for event in writer.opening():
            yield _event(event)
        async for _, item in events:
            for event in writer.piece(item) if isinstance(item, Piece) else writer.closing(item):
                yield _event(event)
        if on_done is not None:
            await on_done(writer.response)
    except Exception as exc:
        log.warning("request %s failed mid-stream: %s", writer.shape.id, exc)
        for event in writer.failed(from_exception(exc)):
            yield _event(event)
    finally:
        await events.aclose()
        for slot in slots:
            slot.release()


async def collect(events: AsyncIterator[tuple[int, Piece | Finish]], n: int) -> list[tuple[list[Piece], Finish]]:
    """Each of the n choices' pieces and finish, from `numbered()`'s events."""
    pieces: list[list[Piece]] = [[] for _ in range(n)]
    finishes: list[Finish | None] = [None] * n
    try:
        async for index, item in events:
            if isinstance(item, Piece):
                pieces[index].append(item)
            else:
                finishes[index] = item
    finally:
        await events.aclose()
    if any(f is None for f in finishes):
        raise RuntimeError("the request ended without a finish")
    return list(zip(pieces, finishes))


async def numbered(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """(i, item) from every stream as items come; the first error ends it. Closing it closes them all."""
    if len(streams) == 1:  # one choice: no tasks in between
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                queue.put_nowait((i, item))
        except Exception as exc:
            queue.put_nowait((i, exc))
        finally:
            queue.put_nowait((i, _END))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


_END = object()
