"""EngineLoop background work (chunk-cache recordings): it yields to request-path work between pieces,
so a request arriving while a live variant is being recorded waits for one layer, not the recording."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from splitserve.chunkcache.documents import document_prompt
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.runtime.engine_loop import EngineLoop
from prefill_node.chunks import ChunkPath

DOCS = ["the river runs north past the old mill", "a bridge was built in 1820 by the town", "nobody lives there"]


@pytest.fixture
def loop(tiny_model):
    loop = EngineLoop(Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16)))
    loop.start()
    yield loop
    loop.stop()


def _job(order: list, name: str, pieces: int):
    def job(engine):
        for i in range(pieces):
            order.append(f"{name}{i}")
            yield
        return name
    return job


def test_calls_run_between_background_pieces_and_jobs_run_in_order(loop):
    order, gate = [], threading.Event()
    loop.call(lambda e: gate.wait(5))  # holds the engine thread while the work below is queued
    first = loop.background(_job(order, "a", 3))
    second = loop.background(_job(order, "b", 2))
    call = loop.call(lambda e: order.append("call"))
    gate.set()
    assert first.result(5) == "a" and second.result(5) == "b" and call.result(5) is None
    assert order == ["call", "a0", "a1", "a2", "b0", "b1"]


def test_a_failing_background_job_fails_its_future_only(loop):
    def broken(engine):
        yield
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        loop.background(broken).result(5)
    assert loop.background(_job([], "ok", 1)).result(5) == "ok"


def test_background_work_waits_while_the_engine_has_requests(loop):
    order = []
    loop.call(lambda e: e.add_request([5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True), "r")).result(5)
    loop.background(lambda e: (order.append(e.has_unfinished()) for _ in range(1))).result(5)
    assert order == [False]


def test_a_request_does_not_wait_for_the_previous_requests_recording(loop):
    """The recording's forward (and the misses' stores) runs layer by layer; a call submitted during the first
    layer runs before that forward's last layer (before this fix the whole recording ran as one call and the
    request queued behind it)."""
    engine, order = loop.engine, []
    cache = ChunkCache(engine, ChunkStore(LocalTier(1 << 24)), ChunkCacheConfig(live_variants=4))
    path = ChunkPath(loop, cache)
    prompt, spans = document_prompt(engine.tokenizer, DOCS, "where is the mill?")
    requests = []

    def first_layer(*_):
        if not requests:
            order.append("recording: first layer")
            requests.append(loop.call(lambda e: order.append("next request")))

    hooks = [engine.model.layers[0].mlp.register_forward_hook(first_layer),
             engine.model.layers[-1].mlp.register_forward_hook(lambda *_: order.append("recording: last layer"))]

    async def main():
        assert await path.plan(prompt, spans, "r1") is None  # all misses: recorded after r1's prefill
        path.prefilled("r1")
        deadline = time.monotonic() + 10
        while cache.store.metrics.snapshot()["recorded_variants"] < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    try:
        asyncio.run(main())
    finally:
        for hook in hooks:
            hook.remove()
    requests[0].result(5)
    assert cache.store.metrics.snapshot()["recorded_variants"] == 3
    assert order[:3] == ["recording: first layer", "next request", "recording: last layer"]
