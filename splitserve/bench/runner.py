"""Drives a schedule of (send offset, request) pairs against a target with asyncio.

Life of a run: warm-up requests (optional) are sent together under the concurrency limit and
awaited; their records are kept apart and never enter the metrics. Then the main run starts
its clock: each request waits for its offset, then for a free slot when a concurrency limit is
set (closed loop; the send time, and so TTFT, starts after the slot is taken, as in vLLM),
then is sent in its own task. Sending stops when the schedule ends or at `duration_s`; the run
ends when every request has returned, or at `max_time_s`, when requests still in flight are
cancelled and counted as failed. The benchmark duration is the main run's wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from splitserve.bench.metrics import RequestRecord
from splitserve.bench.progress import Progress
from splitserve.bench.targets import Target
from splitserve.bench.workloads import BenchRequest
from splitserve.runtime.open_files import raise_open_files_limit

TIME_LIMIT_ERROR = "cancelled: the run reached its time limit (max_time_s)"


@dataclass(frozen=True)
class RunConfig:
    max_concurrency: int | None = None  # None: unlimited requests in flight
    duration_s: float | None = None  # stop sending after this many seconds
    max_time_s: float = 3600.0  # hard bound on the main run (and on the warm-up)

    def __post_init__(self):
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.max_time_s <= 0:
            raise ValueError(f"max_time_s must be > 0, got {self.max_time_s}")


@dataclass
class RunResult:
    records: list[RequestRecord]
    warmup_records: list[RequestRecord]
    start_time: float  # perf_counter() at the start of the main run
    duration_s: float
    started_at: str  # wall clock, ISO 8601 UTC
    timed_out: bool = False
    target: dict = field(default_factory=dict)


class Runner:
    def __init__(self, target: Target, config: RunConfig, progress: Progress | None = None):
        self.target, self.config = target, config
        self.progress = progress or Progress(enabled=False)
        self._slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        self._tasks: list[asyncio.Task] = []

    async def run(self, schedule: Iterable[tuple[float, BenchRequest]],
                  warmup: Sequence[BenchRequest] = ()) -> RunResult:
        warmup_records = await self._warmup(warmup)
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        records: list[RequestRecord] = []
        self.progress.start()
        ticker = asyncio.create_task(self.progress.loop())
        t0 = time.perf_counter()
        try:
            timed_out = await self._bounded(self._produce(schedule, t0, records), t0 + self.config.max_time_s)
        finally:
            ticker.cancel()
        duration = time.perf_counter() - t0
        self.progress.render(final=True)
        return RunResult(records, warmup_records, t0, duration, started_at, timed_out, self.target.describe())

    async def _warmup(self, requests: Sequence[BenchRequest]) -> list[RequestRecord]:
        records = [RequestRecord(r.request_id, r.prompt_tokens, r.output_tokens, warmup=True) for r in requests]
        if records:
            self._tasks = [asyncio.create_task(self._send(r, rec, count=False)) for r, rec in zip(requests, records)]
            await self._bounded(None, time.perf_counter() + self.config.max_time_s)
        return records

    async def _bounded(self, producer, deadline: float) -> bool:
        """Run the producer, then wait for every send task, until the deadline; True if hit."""
        timed_out = False
        if producer is not None:
            task = asyncio.create_task(producer)
            await asyncio.wait({task}, timeout=max(0.0, deadline - time.perf_counter()))
            if not task.done():
                timed_out = True
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.perf_counter()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        return timed_out or bool(pending)

    async def _produce(self, schedule, t0: float, records: list[RequestRecord]) -> None:
        duration = self.config.duration_s
        for offset, request in schedule:
            if duration is not None and offset >= duration:
                break
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._slots is not None:
                await self._slots.acquire()
            if duration is not None and time.perf_counter() - t0 >= duration:
                self._release()
                break
            record = RequestRecord(request.request_id, request.prompt_tokens, request.output_tokens, scheduled_s=offset)
            records.append(record)
            self.progress.on_sent()
            self._tasks.append(asyncio.create_task(self._send(request, record, acquired=True)))
            await asyncio.sleep(0)

    async def _send(self, request: BenchRequest, record: RequestRecord, acquired: bool = False, count: bool = True) -> None:
        try:
            if not acquired and self._slots is not None:
                await self._slots.acquire()
                acquired = True
            await self.target.send(request, record)
        except asyncio.CancelledError:
            record.fail(TIME_LIMIT_ERROR)
        except Exception as e:  # a target that broke its no-raise contract
            record.fail(f"{type(e).__name__}: {e}")
        finally:
            if acquired:
                self._release()
            if not record.done:
                record.fail("the target returned without finishing the record")
            if count:
                self.progress.on_done(record.success)

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()


def run(target: Target, schedule: Iterable[tuple[float, BenchRequest]], config: RunConfig,
        warmup: Sequence[BenchRequest] = (), progress: Progress | None = None) -> RunResult:
    """Open the target, run, close it (synchronous entry point)."""

    async def main() -> RunResult:
        async with target:
            return await Runner(target, config, progress).run(schedule, warmup)

    raise_open_files_limit()  # a connection per request in flight
    return asyncio.run(main())
