"""Load shedding and deadlines, shared by the gRPC and HTTP fronts.

The router holds at most `max_requests` requests at once (dispatched to nodes, where they wait
in the nodes' queues or run). One more is refused at once with `Overloaded` -> HTTP 429 /
gRPC RESOURCE_EXHAUSTED, both carrying Retry-After, and costs the nodes nothing. An admitted
request has a deadline: the router's `timeout_s`, or the client's own when that is sooner;
past it `bounded()` closes the request's event iterator, which cancels its node calls.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, TypeVar

T = TypeVar("T")


class Overloaded(Exception):
    """The router is full; the client should retry after `retry_after_s`."""

    def __init__(self, max_requests: int, retry_after_s: float):
        super().__init__(f"the router is at capacity ({max_requests} requests in flight); retry later")
        self.retry_after = str(max(1, math.ceil(retry_after_s)))


class DeadlineExceeded(Exception):
    pass


@dataclass(frozen=True)
class AdmissionConfig:
    max_requests: int = 256
    retry_after_s: float = 1.0
    timeout_s: float = 0.0  # 0: no router deadline (the client's still applies)

    def __post_init__(self):
        if self.max_requests < 1:
            raise ValueError(f"--max-queue must be >= 1, got {self.max_requests}")
        if self.retry_after_s <= 0:
            raise ValueError(f"--retry-after-s must be > 0, got {self.retry_after_s}")
        if self.timeout_s < 0:
            raise ValueError(f"--request-timeout-s must be >= 0 (0: none), got {self.timeout_s}")


class Slot:
    """One admitted request; `release()` (idempotent) or leaving the `with` block frees it."""

    def __init__(self, admission: "Admission"):
        self._admission = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.num_active -= 1
            self._admission = None

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Admission:
    def __init__(self, config: AdmissionConfig = AdmissionConfig(), on_reject=lambda: None):
        self.config = config
        self.num_active = 0
        self.num_rejected = 0
        self.on_reject = on_reject  # e.g. count RESOURCE_EXHAUSTED in the metrics

    def admit(self) -> Slot:
        """A slot for one request, or Overloaded. Single event loop: no lock needed."""
        if self.num_active >= self.config.max_requests:
            self.num_rejected += 1
            self.on_reject()
            raise Overloaded(self.config.max_requests, self.config.retry_after_s)
        self.num_active += 1
        return Slot(self)

    def deadline(self, client_timeout_s: float | None = None) -> float | None:
        """The request's deadline in event-loop time: the sooner of the router's and the client's."""
        limits = [t for t in (self.config.timeout_s or None, client_timeout_s) if t is not None]
        return asyncio.get_running_loop().time() + min(limits) if limits else None


async def bounded(events: AsyncIterator[T], deadline: float | None) -> AsyncIterator[T]:
    """`events`' items until it ends or `deadline` passes (DeadlineExceeded); always closes `events`.

    One timer per request (not one per item: tokens are many): when it fires while we wait
    for `events`, it cancels that wait; when it fires while the consumer holds an item, the
    next step raises."""
    if deadline is None:
        try:
            async for item in events:
                yield item
        finally:
            await events.aclose()
        return
    timer = _Deadline(asyncio.current_task(), deadline)
    try:
        while True:
            timer.check()
            timer.waiting = True
            try:
                item = await anext(events)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                timer.check_cancelled()
                raise
            finally:
                timer.waiting = False
            yield item
    finally:
        timer.handle.cancel()
        await events.aclose()


async def within(work: Awaitable[T], deadline: float | None) -> T:
    """`work`'s result, or DeadlineExceeded (work cancelled) if `deadline` (event-loop time) passes first."""
    if deadline is None:
        return await work
    try:
        return await asyncio.wait_for(work, max(0.0, deadline - asyncio.get_running_loop().time()))
    except TimeoutError:
        raise DeadlineExceeded("the request's deadline passed before it finished") from None


class _Deadline:
    def __init__(self, task: asyncio.Task, deadline: float):
        self.task, self.waiting, self.expired = task, False, False
        self.handle = task.get_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.waiting:
            self.task.cancel()

    def check(self) -> None:
        if self.expired:
            raise DeadlineExceeded("the request's deadline passed before it finished")

    def check_cancelled(self) -> None:
        """Inside `except CancelledError`: our own cancel becomes DeadlineExceeded, others propagate."""
        if self.expired and self.task.uncancel() == 0:
            self.check()
