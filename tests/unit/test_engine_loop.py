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
