"""OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`.

A batch is a JSONL file (uploaded with the Files API, batch_files.py), one request a line, every
line for the batch's `endpoint` (chat, completions, embeddings or responses; batch_lines.py). The
router that creates a batch runs its lines, at most `--batch-concurrency` of them at a time over all
its batches, each through its own HTTP app in-process (asgi_call.py): a line meets the checks,
admission and metrics a client's request meets, on behalf of the batch's owner. A line that sets no
`priority` runs at `--batch-priority` (1): interactive requests (0) go first on the nodes and
preempt batch lines when an engine is full (vLLM's priority scheduling).
A line refused for load (429, 503) waits and is sent again until the batch ends; any other answer is
final. Answers go to the output file (2xx) or the error file, `{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}` a line, in the input's order.

Life of a batch, as on OpenAI: validating (a file whose lines do not all parse fails the batch,
`errors` naming each line) -> in_progress -> finalizing -> completed; cancel -> cancelling (lines
in flight are cancelled on the nodes, lines not sent go to the error file as `batch_cancelled`)
-> cancelled; lines not sent 24 h after creation go there as `batch_expired` -> expired. Where
batches are kept, how router replicas share them and resume a stopped router's: batch_store.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable

from router.front import asgi_call
from router.front.batch_files import OUTPUT_PURPOSE, FileStore
from router.front.batch_lines import COMPLETION_WINDOW_S, DEFAULT_PRIORITY, CreateBatch, Line, line_error, parse_lines
from router.front.batch_store import Batch, BatchStore
from router.front.http_errors import ApiError
from router.front.pages import cursor_page
from router.redis_client import StoreUnavailable

log = logging.getLogger(__name__)
DEFAULT_CONCURRENCY = 4
RETRY_STATUSES = (429, 503)
MAX_RETRY_WAIT_S = 30.0
WATCH_S = 0.5  # how often a running batch is written to its store and checked for a cancel from elsewhere


class Batches:
    """The batches of this router (kept in `store`); `app` (the router's HTTP app) runs their lines."""

    def __init__(self, files: FileStore, concurrency: int = DEFAULT_CONCURRENCY, priority: int = DEFAULT_PRIORITY,
                 store: BatchStore | None = None, count_line: Callable[[str], None] = lambda outcome: None):
        if concurrency < 1:
            raise ValueError(f"--batch-concurrency must be >= 1, got {concurrency}")
        self.files, self.concurrency, self.priority, self.app = files, concurrency, priority, None
        self.store = store or BatchStore()
        self.count_line = count_line  # the metrics' lines by outcome: completed, failed, not_sent
        self.token = uuid.uuid4().hex  # this router's claims on the batches it runs
        self._running: dict[str, Batch] = {}  # the batches this router runs
        self._tasks: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self._sweeper: asyncio.Task | None = None

    @property
    def num_running(self) -> int:
        return len(self._running)

    async def create(self, owner: str, request: CreateBatch) -> Batch:
        source = await self.files.get(owner, request.input_file_id, "input_file_id")
        if source.purpose != "batch":
            raise ApiError(400, f"input_file_id: file {source.id} has purpose {source.purpose!r}, not 'batch'",
                           param="input_file_id")
        now = int(time.time())
        window_s = COMPLETION_WINDOW_S[request.completion_window]
        batch = Batch(f"batch_{uuid.uuid4().hex}", owner, request, now, now + window_s)
        await self.store.save(batch)
        await self.store.claim(batch.id, self.token)
        self._start(batch, source.data, {})
        return batch

    async def get(self, owner: str, batch_id: str) -> Batch:
        batch = self._running.get(batch_id) or await self.store.load(batch_id)
        if batch is None or batch.owner != owner:
            raise ApiError(404, f"no batch with id {batch_id!r}", code="batch_not_found")
        return await self._resumed(batch)

    async def cancel(self, owner: str, batch_id: str) -> Batch:
        batch = await self.get(owner, batch_id)
        if batch.final:
            raise ApiError(409, f"batch {batch_id} is {batch.status}: only a running batch can be cancelled",
                           code="batch_not_cancellable")
        if batch.id in self._running:
            _cancel(batch)
            await self.store.save(batch)
        else:  # another router runs it: it sees the request within WATCH_S
            await self.store.request_cancel(batch.id)
            if batch.status != "cancelling":
                batch.enter("cancelling")
        return batch

    async def listed(self, owner: str, limit: int, after: str | None) -> dict:
        """The owner's batches, newest first, a page after the batch `after`."""
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be in [1, 100]", param="limit")
        batches = [self._running.get(b.id) or await self._resumed(b) for b in await self.store.owned(owner)]
        return cursor_page([b.card() for b in reversed(batches)], limit, after, "batch")

    def start_sweeping(self) -> None:
        """On the running loop: every `store.sweep_s`, resume the batches whose runner stopped (none in memory)."""
        if self.store.sweep_s is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(self.store.sweep_s))

    async def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def _sweep_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                log.warning("batches not swept: %s", exc)

    async def sweep(self) -> int:
        """Resume here each unfinished batch that no router runs; how many were."""
        resumed = 0
        for batch_id in await self.store.unfinished():
            batch = None if batch_id in self._running else await self.store.load(batch_id)
            if batch is not None and not batch.final:
                resumed += (await self._resumed(batch)).id in self._running
        return resumed

    async def _resumed(self, batch: Batch) -> Batch:
        """`batch`, claimed and resumed here when it is unfinished and no router runs it (its runner's claim
        lapsed: that router stopped); as read otherwise."""
        if batch.final or batch.id in self._running or not await self.store.claim(batch.id, self.token):
            return batch
        batch = await self.store.load(batch.id) or batch  # its state as its last runner left it
        try:
            source = await self.files.get(batch.owner, batch.request.input_file_id)
        except ApiError:
            batch.errors = [line_error("input_file_missing", f"the batch's input file {batch.request.input_file_id} "
                                       "was deleted before the batch could be resumed", None)]
            batch.enter("failed")
            await self._save(batch)
            await self.store.release(batch.id, self.token)
            return batch
        log.info("batch %s resumed here: its runner stopped", batch.id)
        self._start(batch, source.data, await self.store.results(batch.id))
        return batch

    def _start(self, batch: Batch, data: bytes, done: dict[int, dict]) -> None:
        """Run `batch` here: the lines of `data` without a result in `done`, and its watch."""
        self._running[batch.id] = batch
        for work in (self._run(batch, data, done), self._watch(batch)):
            task = asyncio.get_running_loop().create_task(work)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: Batch, data: bytes, done: dict[int, dict]) -> None:
        try:
            await self._run_lines(batch, data, done)
        except StoreUnavailable as exc:  # its output could not be kept
            batch.errors = [line_error(exc.code, str(exc), None)]
            batch.enter("failed")
        finally:
            if not batch.abandoned:
                await self._save(batch)
                await self._release(batch)
            self._running.pop(batch.id, None)

    async def _run_lines(self, batch: Batch, data: bytes, done: dict[int, dict]) -> None:
        # a file of up to --batch-storage-bytes: parsed off the event loop, which keeps serving meanwhile
        lines, errors = await asyncio.to_thread(parse_lines, data, batch.request.endpoint, self.priority)
        if errors:
            batch.errors = errors[:1000]
            batch.enter("failed")
            return
        batch.total, batch.completed = len(lines), sum(map(_succeeded, done.values()))
        batch.failed = len(done) - batch.completed
        if batch.status == "validating":
            batch.enter("in_progress")
        pending = [i for i in range(len(lines)) if i not in done]
        answered = await asyncio.gather(*(self._answer(batch, i, lines[i]) for i in pending))
        if batch.abandoned:
            return
        results = [{**done, **dict(zip(pending, answered))}[i] for i in range(len(lines))]
        batch.enter("finalizing")
        await self._write_files(batch, results)
        expired = any(r["error"] and r["error"]["code"] == "batch_expired" for r in results)
        batch.enter("cancelled" if batch.stop.is_set() else "expired" if expired else "completed")

    async def _watch(self, batch: Batch) -> None:
        """While the batch runs here: renew the claim, write its state, look for a cancel from another router;
        a claim found lapsed and taken (this router stalled past --batch-claim-s) abandons the batch to its new
        runner."""
        while batch.id in self._running:
            await asyncio.sleep(WATCH_S)
            try:
                if not await self.store.renew(batch.id, self.token):
                    log.warning("batch %s: its claim lapsed and another router runs it; abandoned here", batch.id)
                    batch.abandoned = True
                    batch.stop.set()
                    return
                if not batch.stop.is_set() and await self.store.cancel_requested(batch.id):
                    _cancel(batch)
            except StoreUnavailable as exc:
                log.warning("batch %s: %s", batch.id, exc)
            if batch.id in self._running:
                await self._save(batch)

    async def _save(self, batch: Batch) -> None:
        try:
            await self.store.save(batch)
        except StoreUnavailable as exc:  # the batch runs on; its state is written again within WATCH_S
            log.warning("batch %s not saved: %s", batch.id, exc)

    async def _release(self, batch: Batch) -> None:
        try:
            if batch.final:
                await self.store.drop_results(batch.id)
            await self.store.release(batch.id, self.token)
        except StoreUnavailable as exc:  # the claim lapses by itself; a final batch is never resumed
            log.warning("batch %s: %s", batch.id, exc)

    async def _answer(self, batch: Batch, index: int, line: Line) -> dict:
        """The line's result object, counted in the batch's request_counts and kept for a resume."""
        line_id = f"batch_req_{uuid.uuid4().hex}"
        async with self._slot():
            result = await self._send(batch, line, line_id)
        if batch.abandoned:
            return result
        ok = _succeeded(result)
        batch.completed += ok
        batch.failed += not ok
        self.count_line("completed" if ok else "failed" if result["response"] else "not_sent")
        try:
            await self.store.save_result(batch.id, index, result)
        except StoreUnavailable as exc:  # kept in memory; only a resume would send the line again
            log.warning("batch %s: line %d's result not stored: %s", batch.id, index, exc)
        return result

    async def _send(self, batch: Batch, line: Line, line_id: str) -> dict:
        headers = {"content-type": "application/json", "x-request-id": line_id}
        wait_s = 0.5
        while True:
            stopped = _stopped(batch)
            if stopped:
                return _result(line_id, line.custom_id, None, stopped)
            answer = await asgi_call.post(self.app, batch.request.endpoint, line.body, headers, batch.owner,
                                          batch.stop)
            if answer.status not in RETRY_STATUSES or batch.stop.is_set():
                return _result(line_id, line.custom_id, answer, None)
            wait_s = min(MAX_RETRY_WAIT_S, max(wait_s * 2, _retry_after(answer)))
            await asyncio.sleep(wait_s)

    def _slot(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on the running loop
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    async def _write_files(self, batch: Batch, results: list[dict]) -> None:
        done = [r for r in results if _succeeded(r)]
        failed = [r for r in results if not _succeeded(r)]
        for name, rows in (("output_file_id", done), ("error_file_id", failed)):
            if rows:
                data = "".join(json.dumps(row) + "\n" for row in rows).encode()
                stored = await self.files.add(batch.owner, f"{batch.id}_{name[:-8]}.jsonl", OUTPUT_PURPOSE, data,
                                              output=True)
                setattr(batch, name, stored.id)


def _cancel(batch: Batch) -> None:
    if batch.status != "cancelling":
        batch.enter("cancelling")
    batch.stop.set()


def _succeeded(result: dict) -> bool:
    return result["response"] is not None and 200 <= result["response"]["status_code"] < 300


def _stopped(batch: Batch) -> dict | None:
    """The error of a line not sent because the batch was cancelled or ran out of time, else None."""
    why = "cancelled" if batch.stop.is_set() else "expired" if time.time() >= batch.expires_at else None
    return why and line_error(f"batch_{why}", f"the batch was {why} before this request was sent", None)


def _retry_after(answer: asgi_call.Answer) -> float:
    try:
        return float(answer.headers.get("retry-after", 0))
    except ValueError:
        return 0.0


def _result(line_id: str, custom_id: str, answer: asgi_call.Answer | None, error: dict | None) -> dict:
    response = None
    if answer is not None:
        try:
            body = json.loads(answer.body)
        except ValueError:
            body = answer.body.decode("utf-8", "replace")
        response = {"status_code": answer.status, "request_id": answer.headers.get("x-request-id", line_id),
                    "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response,
            "error": None if error is None else {"code": error["code"], "message": error["message"]}}
