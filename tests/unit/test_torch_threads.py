"""in_passing_thread: start-up work on a thread that ends with it (see splitserve/runtime/torch_threads.py)."""

import asyncio
import threading

import pytest

from splitserve.runtime.torch_threads import in_passing_thread


def names_of_live_threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_the_result_comes_back_and_the_thread_is_gone():
    seen = {}

    def work(a, b):
        seen["thread"] = threading.current_thread().name
        return a + b

    async def main():
        return await in_passing_thread(work, 2, 3)

    assert asyncio.run(main()) == 5
    assert seen["thread"].startswith("start-work") and seen["thread"] != "MainThread"
    assert seen["thread"] not in names_of_live_threads()


def test_an_error_reaches_the_caller():
    def fails():
        raise ValueError("bad model folder")

    async def main():
        await in_passing_thread(fails)

    with pytest.raises(ValueError, match="bad model folder"):
        asyncio.run(main())
    assert not any(name.startswith("start-fails") for name in names_of_live_threads())


def test_the_event_loop_keeps_running_meanwhile():
    release = threading.Event()

    async def main():
        task = asyncio.create_task(in_passing_thread(release.wait, 5))
        await asyncio.sleep(0.01)  # the loop is free while the work waits
        assert not task.done()
        release.set()
        return await task

    assert asyncio.run(main()) is True


def test_a_serial_thread_runs_torch_on_one_thread_and_leaves_the_others_their_count():
    import torch

    from splitserve.runtime.torch_threads import serial_executor

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with serial_executor(1) as executor:
            assert executor.submit(torch.get_num_threads).result() == 1
        other = {}
        thread = threading.Thread(target=lambda: other.setdefault("n", torch.get_num_threads()))
        thread.start()
        thread.join()
        assert other["n"] == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
