"""EngineLoop: runs an Engine on a dedicated thread, driven by other threads.

Other threads never touch the engine: they submit functions with `call(fn)` (run on the
engine thread between steps; the result comes back as a Future) and receive each request's
outputs through the sink they registered with `subscribe`. The thread steps while the engine
has work and sleeps on a condition otherwise. Off-path work (chunk-cache recordings) comes as
`background(job)`: job(engine) returns an iterator whose pieces (e.g. one layer each) run only
while no call is queued and no request is in the engine, so a new request waits for one piece at
most, never for the whole job. Collaborators come at construction: `hooks`
(prefill nodes: prefill_node/transfers.py sends each layer's KV during the step and finishes
transfers after it) and `observer` (node/metrics.py: each subscription, each step's duration
and outputs) and `step_log` (`--step-log`: runtime/step_log.py, each step's start, duration and shape) and
`cpu_share` (`--cpu-share`: runtime/cpu_share.py, the host's cores claimed before each step and after
each layer, given back when the loop has nothing to do).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from collections import deque
from typing import Callable, Iterator, Protocol

from splitserve.engine import Engine, RequestOutput
from splitserve.runtime.cpu_share import CpuShare
from splitserve.runtime.step_log import StepLog, StepShape

log = logging.getLogger(__name__)

Sink = Callable[[RequestOutput], None]
ENGINE_ERROR = "error"  # finish reason of requests failed by a broken engine step


class StepHooks(Protocol):
    """Called on the engine thread around each step."""

    def make_layer_hook(self, plan) -> Callable[[int], None] | None:
        """Before the step: a function called after each layer of it (None: nothing to do)."""

    def after_step(self, engine: Engine, outputs: list[RequestOutput]) -> None:
        """After the step, before the outputs reach their subscribers."""


class StepObserver(Protocol):
    """Hears of requests and steps: `on_admit` / `on_drop` from any thread, `on_step` on the engine thread."""

    def on_admit(self, request_id: str) -> None: ...

    def on_drop(self, request_id: str) -> None: ...

    def on_step(self, seconds: float, outputs: list[RequestOutput]) -> None: ...


class EngineLoop:
    def __init__(self, engine: Engine, hooks: StepHooks | None = None, observer: StepObserver | None = None,
                 fault_step_delay_s: float = 0.0, step_log: StepLog | None = None, cpu_share: CpuShare | None = None):
        self.engine = engine
        self.hooks = hooks
        self.observer = observer
        self.step_log = step_log
        self.cpu_share = cpu_share
        self.fault_step_delay_s = fault_step_delay_s  # fault injection for tests: sleep after each step
        self._calls: list[tuple[Callable, Future]] = []
        self._background: deque[tuple[Callable | Iterator, Future]] = deque()
        self._sinks: dict[str, Sink] = {}
        self._wake = threading.Condition()
        self._running = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        self._thread.join(timeout_s)
        if self.step_log is not None:
            self.step_log.close()

    def call(self, fn: Callable[[Engine], object]) -> Future:
        return self._submit(fn, background=False)

    def background(self, job: Callable[[Engine], Iterator]) -> Future:
        """Low-priority work, FIFO: job(engine) -> iterator, advanced one piece at a time on the engine thread
        when nothing else waits; the future gets the value it returns (StopIteration.value)."""
        return self._submit(job, background=True)

    def _submit(self, fn: Callable, background: bool) -> Future:
        future: Future = Future()
        with self._wake:
            if not self._running:
                future.set_exception(RuntimeError("engine loop is stopped"))
                return future
            (self._background if background else self._calls).append((fn, future))  # under the lock: _run swaps _calls
            self._wake.notify()
        return future

    def subscribe(self, request_id: str, sink: Sink) -> None:
        """Register before the request is added; the sink runs on the engine thread."""
        with self._wake:
            self._sinks[request_id] = sink
        if self.observer is not None:
            self.observer.on_admit(request_id)

    def unsubscribe(self, request_id: str) -> None:
        with self._wake:
            self._sinks.pop(request_id, None)
        if self.observer is not None:
            self.observer.on_drop(request_id)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._running and not (self._calls or self._background or self.engine.has_unfinished()):
                    if self.cpu_share is not None:
                        self.cpu_share.release()
                    self._wake.wait()
                if not self._running:
                    break
                calls, self._calls = self._calls, []
            self._run_calls(calls)
            if self.engine.has_unfinished():
                self._step()
                continue
            self._deliver(self.engine.outputs.drain())  # e.g. an abort's last output: no step is left to send it
            if self._idle():
                self._run_piece()
        self._fail_pending()

    def _idle(self) -> bool:
        with self._wake:
            return not self._calls and bool(self._background)

    def _run_piece(self) -> None:
        """One piece of the oldest background job (starting it first if it is new). Other threads append to
        `_background`; every read and change of its head here is under the lock too."""
        with self._wake:
            job, future = self._background[0]
        try:
            if callable(job):
                if not future.set_running_or_notify_cancel():
                    self._end_piece()
                    return
                job = iter(job(self.engine))
                with self._wake:
                    self._background[0] = (job, future)
            next(job)
        except StopIteration as done:
            self._end_piece()
            future.set_result(done.value)
        except BaseException as exc:  # noqa: BLE001 - the caller gets it through the future
            self._end_piece()
            future.set_exception(exc)

    def _end_piece(self) -> None:
        with self._wake:
            self._background.popleft()

    def _run_calls(self, calls) -> None:
        for fn, future in calls:
            if not future.set_running_or_notify_cancel():  # the caller gave up (e.g. a timed-out Stats)
                continue
            try:
                future.set_result(fn(self.engine))
            except BaseException as exc:  # noqa: BLE001 - the caller gets it through the future
                future.set_exception(exc)

    def _step(self) -> None:
        started_unix, start, shapes = time.time(), time.perf_counter(), []
        if self.cpu_share is not None:
            self.cpu_share.claim()
        try:
            outputs = self.engine.step(self._layer_hook_factory(shapes))
        except Exception:  # a broken step fails its requests, never the node
            log.exception("engine step failed; failing the requests in flight")
            self._fail_requests()
            return
        seconds = time.perf_counter() - start
        if self.observer is not None:
            self.observer.on_step(seconds, outputs)
        if self.step_log is not None and shapes:
            self.step_log.write(started_unix, seconds, shapes[0])
        if self.fault_step_delay_s:
            time.sleep(self.fault_step_delay_s)
        if self.hooks is not None:
            self.hooks.after_step(self.engine, outputs)
        self._deliver(outputs)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            with self._wake:
                sink = self._sinks.pop(out.request_id, None) if out.finished else self._sinks.get(out.request_id)
            if sink is not None:
                sink(out)

    def _layer_hook_factory(self, shapes: list[StepShape]):
        """What the engine calls with its plan before the step (the hooks' factory); with a step log it also
        appends the plan's shape to `shapes`; with a CPU share the layer hook claims the cores after each layer."""
        make = self.hooks.make_layer_hook if self.hooks is not None else None
        if self.step_log is None and self.cpu_share is None:
            return make

        def shape_and_make(plan):
            if self.step_log is not None:
                shapes.append(StepShape.of(plan))
            hook = make(plan) if make is not None else None
            return hook if self.cpu_share is None else _then_claim(hook, self.cpu_share)

        return shape_and_make

    def _fail_requests(self) -> None:
        """Aborts every request in the engine (freeing its blocks) and tells each subscriber."""
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
        self.engine.outputs.drain()
        with self._wake:
            sinks, self._sinks = self._sinks, {}
        for request_id, sink in sinks.items():
            sink(RequestOutput(request_id, [], "", True, ENGINE_ERROR))

    def _fail_pending(self) -> None:
        with self._wake:
            calls, self._calls = self._calls, []
            jobs, self._background = list(self._background), deque()
        for job, future in calls + jobs:
            if not callable(job) or future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("engine loop stopped"))


def _then_claim(hook, share: CpuShare):
    """A layer hook running `hook` (if any), then claiming the host's cores again for the next layer."""
    if hook is None:
        return lambda layer: share.claim()

    def hook_then_claim(layer: int) -> None:
        hook(layer)
        share.claim()

    return hook_then_claim
