"""A call whose caller gave up (its future cancelled) is skipped; the engine thread lives on."""

from __future__ import annotations

import threading

from splitserve.runtime.engine_loop import EngineLoop


class _NoOutputs:
    def drain(self) -> list:
        return []


class _IdleEngine:
    outputs = _NoOutputs()

    def has_unfinished(self) -> bool:
        return False


def test_cancelled_call_does_not_kill_the_engine_thread():
    loop = EngineLoop(_IdleEngine())
    loop.start()
    started, gate = threading.Event(), threading.Event()
    try:
        blocker = loop.call(lambda engine: (started.set(), gate.wait(5))[1])
        assert started.wait(5)  # the engine thread is busy: the next call waits in the queue
        cancelled = loop.call(lambda engine: "never")
        assert cancelled.cancel()
        gate.set()
        assert blocker.result(5) is True
        assert loop.call(lambda engine: "alive").result(5) == "alive"
    finally:
        loop.stop()
