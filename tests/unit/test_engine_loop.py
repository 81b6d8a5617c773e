"""EngineLoop: a step that raises fails the requests in flight, frees their blocks, and the loop goes on."""

import asyncio

import pytest

from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.output_stream import EngineError, run_streaming


def test_a_failing_step_fails_its_requests_and_the_loop_keeps_serving(tiny_model):
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=4))
    loop = EngineLoop(engine)
    original = engine.runner.execute
    calls = {"n": 0}

    def flaky(plan, hook=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected")
        return original(plan, hook)

    engine.runner.execute = flaky
    loop.start()

    async def run(rid):
        admit = lambda e: e.add_request([5, 6, 7, 8], SamplingParams(max_tokens=6, ignore_eos=True), rid)
        return [o async for o in run_streaming(loop, rid, admit)]

    async def main():
        with pytest.raises(EngineError, match="r1"):
            await run("r1")
        outs = await run("r2")
        assert sum(len(o.new_token_ids) for o in outs) == 6

    try:
        asyncio.run(main())
        assert loop.call(lambda e: e.num_used_blocks).result(5) == 0
    finally:
        loop.stop()


@pytest.mark.parametrize("while_admitting", [False, True], ids=["admit_queued", "admit_running"])
def test_a_consumer_cancelled_around_admission_leaves_no_reservation_or_request(tiny_model, while_admitting):
    """A decode node's Decode cancelled after the KV arrived, before or while the engine admits the request:
    the reservation the admit would take is freed, or the admitted request is stopped (it used to stay
    reserved, or run on with nobody reading it)."""
    import threading

    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=4))
    loop = EngineLoop(engine)
    loop.start()
    prompt, params = [5, 6, 7, 8, 9], SamplingParams(max_tokens=200, ignore_eos=True)  # fits the 256-token pool
    gate, entered = threading.Event(), threading.Event()

    def admit(e):
        if while_admitting:
            entered.set()
            gate.wait(5)
        e.admit_prefilled("r", prompt, 11, params)

    async def main():
        assert loop.call(lambda e: e.reserve("r", len(prompt) + 1)).result(5)
        if not while_admitting:  # the engine thread is busy: admit waits its turn
            loop.call(lambda e: (entered.set(), gate.wait(5)))
        consumer = asyncio.ensure_future(_drain(run_streaming(loop, "r", admit)))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        await asyncio.sleep(0.05)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        gate.set()
        # the engine thread takes calls in order: this runs right after the admit (and the abort, if queued)
        return await asyncio.wrap_future(loop.call(lambda e: (e.num_used_blocks, dict(e.reserved), e.has_unfinished())))

    try:
        assert asyncio.run(main()) == (0, {}, False)
    finally:
        loop.stop()


async def _drain(outputs) -> list:
    return [o async for o in outputs]


def test_an_abort_of_the_only_request_ends_its_stream(tiny_model):
    """The Abort RPC stops a request through a call on the engine thread: its last output (finish reason abort)
    reaches the stream even when no other request is left to step (it used to wait for the next request)."""
    loop = EngineLoop(Engine(tiny_model, EngineConfig(num_blocks=64, block_size=4)))
    loop.start()

    async def main():
        admit = lambda e: e.add_request([5, 6, 7, 8], SamplingParams(max_tokens=200, ignore_eos=True), "r")
        outs = []
        async for out in run_streaming(loop, "r", admit):
            outs.append(out)
            if len(outs) == 1:
                assert await asyncio.wrap_future(loop.call(lambda e: e.abort("r")))
        return outs

    try:
        outs = asyncio.run(asyncio.wait_for(main(), 10))
        assert outs[-1].finished and outs[-1].finish_reason == "abort"
        assert sum(len(o.new_token_ids) for o in outs) < 200
        assert loop.call(lambda e: e.num_used_blocks).result(5) == 0
    finally:
        loop.stop()
