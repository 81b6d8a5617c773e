"""`--step-log`: one line per engine step with its start, duration and the shape of its chunks."""

import asyncio

from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.output_stream import run_streaming
from splitserve.runtime.step_log import StepLog, StepShape, read_step_log


def _generate(loop, rid, prompt, max_tokens):
    async def run():
        admit = lambda e: e.add_request(prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), rid)
        return [o async for o in run_streaming(loop, rid, admit)]

    return asyncio.run(run())


def test_each_step_is_logged_with_its_prompt_chunks_and_decode_contexts(tiny_model, tmp_path):
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=4, max_num_batched_tokens=8))
    loop = EngineLoop(engine, step_log=StepLog(tmp_path / "steps.jsonl"))
    loop.start()
    try:
        _generate(loop, "a", list(range(5, 25)), max_tokens=4)  # 20 prompt tokens in chunks of 8
    finally:
        loop.stop()
    steps = read_step_log(tmp_path / "steps.jsonl")
    assert [s["prompt"] for s in steps] == [[[0, 8]], [[8, 8]], [[16, 4]], [], [], []]
    assert [s["decode"] for s in steps] == [[], [], [], [21], [22], [23]]  # context after each fed token
    assert all(s["s"] > 0 for s in steps) and [s["t"] for s in steps] == sorted(s["t"] for s in steps)


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"t": 1, "s": 0.5, "prompt": [], "decode": [3]}\n{"t": 2, "s"')
    assert read_step_log(path) == [{"t": 1, "s": 0.5, "prompt": [], "decode": [3]}]


def test_a_folder_gets_one_log_per_node(tmp_path):
    for node_id in ("prefill-a", "decode-b"):
        log = StepLog.open(tmp_path, node_id)
        log.write(1.0, 0.25, StepShape([(0, 4)], [9]))
        log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decode-b.jsonl", "prefill-a.jsonl"]
    assert read_step_log(tmp_path / "decode-b.jsonl") == [{"t": 1.0, "s": 0.25, "prompt": [[0, 4]], "decode": [9]}]
