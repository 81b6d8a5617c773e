"""OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`.

A batch is a JSONL file (uploaded with the Files API, batch_files.py), one request a line:
`{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`, every
line for the batch's `endpoint` (chat, completions, embeddings or responses). The router runs
the lines itself, at most `--batch-concurrency` of them at a time over all batches, each through
its own HTTP app in-process (asgi_call.py): a line meets the checks, admission and metrics a
client's request meets, under the key that created the batch. A line that sets no `priority` runs
at `--batch-priority` (1): interactive requests (0) go first on the nodes and preempt batch lines
when an engine is full (vLLM's priority scheduling; embeddings have no priority). A line refused for load (429,
503) waits and is sent again until the batch ends; any other answer is final. Answers go to the
output file (2xx) or the error file, `{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}` a line, in the input's order.

Life of a batch, as on OpenAI: validating (a file whose lines do not all parse fails the batch,
`errors` naming each line) -> in_progress -> finalizing -> completed; cancel -> cancelling (lines
in flight are cancelled on the nodes, lines not sent go to the error file as `batch_cancelled`)
-> cancelled; lines not sent 24 h after creation go there as `batch_expired` -> expired.
Batches live in the router's memory, like its files: per replica, gone on restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, ValidationError

from router.front import asgi_call
from router.front.batch_files import OUTPUT_PURPOSE, FileStore
from router.front.http_errors import ApiError
from router.front.pages import cursor_page

log = logging.getLogger(__name__)
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
COMPLETION_WINDOW_S = {"24h": 24 * 3600}
MAX_LINES = 50_000  # OpenAI's limit per batch
MAX_BATCHES = 10_000  # kept in memory; the oldest finished are forgotten first
DEFAULT_CONCURRENCY = 4
DEFAULT_PRIORITY = 1  # behind interactive requests (priority 0), which preempt batch lines when the engine is full
PRIORITIZED = ("/v1/chat/completions", "/v1/completions", "/v1/responses")  # the endpoints that take a priority
RETRY_STATUSES = (429, 503)
MAX_RETRY_WAIT_S = 30.0
FINAL = ("completed", "failed", "cancelled", "expired")


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None

    @classmethod
    def parse(cls, raw: bytes) -> "CreateBatch":
        try:
            body = cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ApiError(400, f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}",
                           param=".".join(map(str, first["loc"])) or None) from None
        body.check()
        return body

    def check(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ApiError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}, got {self.endpoint!r}",
                           param="endpoint")
        if self.completion_window not in COMPLETION_WINDOW_S:
            raise ApiError(400, f"completion_window must be 24h, got {self.completion_window!r}",
                           param="completion_window")
        metadata = self.metadata or {}
        if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
            raise ApiError(400, "metadata: at most 16 pairs, keys of at most 64 characters, values of at most 512",
                           param="metadata")


@dataclass(frozen=True)
class Line:
    custom_id: str
    body: bytes


def parse_lines(data: bytes, endpoint: str, priority: int = DEFAULT_PRIORITY) -> tuple[list[Line], list[dict]]:
    """The file's requests (a body without a priority gets `priority` where the endpoint takes one), or the
    errors that fail the batch (OpenAI's shape: code, message, line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [_error("invalid_json_line", "the file is not UTF-8 text", None)]
    lines, errors, seen = [], [], set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            line, error = _parse_line(raw, endpoint, seen, number, priority)
            lines += [line] if line else []
            errors += [error] if error else []
    if not lines and not errors:
        errors.append(_error("empty_file", "the input file holds no requests", None))
    if len(lines) > MAX_LINES:
        errors.append(_error("too_many_requests", f"a batch takes at most {MAX_LINES} requests, this file has "
                             f"{len(lines)}", None))
    return lines, errors


def _parse_line(raw: str, endpoint: str, seen: set, number: int, priority: int) -> tuple[Line | None, dict | None]:
    try:
        request = json.loads(raw)
    except ValueError:
        return None, _error("invalid_json_line", "the line is not JSON", number)
    if not isinstance(request, dict):
        return None, _error("invalid_request", "the line is not a JSON object", number)
    custom_id, body = request.get("custom_id"), request.get("body")
    problem = ("custom_id", "custom_id must be a non-empty string") if not isinstance(custom_id, str) or not custom_id \
        else ("custom_id", f"custom_id {custom_id!r} is used twice") if custom_id in seen \
        else ("method", "method must be POST") if request.get("method") != "POST" \
        else ("url", f"url must be the batch's endpoint {endpoint}") if request.get("url") != endpoint \
        else ("body", "body must be a JSON object") if not isinstance(body, dict) \
        else ("body.stream", "a batch answers whole: stream must be false") if body.get("stream") \
        else None
    if problem:
        return None, _error("invalid_request", problem[1], number, problem[0])
    seen.add(custom_id)
    if endpoint in PRIORITIZED:
        body.setdefault("priority", priority)
    return Line(custom_id, json.dumps(body).encode()), None


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


@dataclass
class Batch:
    id: str
    owner: str
    authorization: str | None  # the creator's credentials, sent with each line (kept in memory only)
    request: CreateBatch
    created_at: int
    expires_at: int
    status: str = "validating"
    times: dict = field(default_factory=dict)  # in_progress_at, finalizing_at, completed_at, ...
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # set on cancel: lines in flight are abandoned

    def card(self) -> dict:
        """The batch object of OpenAI's API."""
        times = {f"{name}_at": self.times.get(name) for name in
                 ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")}
        return {"id": self.id, "object": "batch", "endpoint": self.request.endpoint,
                "errors": {"object": "list", "data": self.errors} if self.errors else None,
                "input_file_id": self.request.input_file_id, "completion_window": self.request.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": self.created_at, "expires_at": self.expires_at, **times,
                "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
                "metadata": self.request.metadata}

    def enter(self, status: str) -> None:
        self.status = status
        self.times[status] = int(time.time())


class Batches:
    """The batches of this router; `app` (the router's HTTP app) runs their lines."""

    def __init__(self, files: FileStore, concurrency: int = DEFAULT_CONCURRENCY, priority: int = DEFAULT_PRIORITY):
        if concurrency < 1:
            raise ValueError(f"--batch-concurrency must be >= 1, got {concurrency}")
        self.files, self.concurrency, self.priority, self.app = files, concurrency, priority, None
        self._batches: dict[str, Batch] = {}
        self._tasks: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None

    def create(self, owner: str, authorization: str | None, request: CreateBatch) -> Batch:
        source = self.files.get(owner, request.input_file_id, "input_file_id")
        if source.purpose != "batch":
            raise ApiError(400, f"input_file_id: file {source.id} has purpose {source.purpose!r}, not 'batch'",
                           param="input_file_id")
        now = int(time.time())
        batch = Batch(f"batch_{uuid.uuid4().hex}", owner, authorization, request, now,
                      now + COMPLETION_WINDOW_S[request.completion_window])
        self._forget_old()
        self._batches[batch.id] = batch
        task = asyncio.get_running_loop().create_task(self._run(batch, source.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return batch

    def get(self, owner: str, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.owner != owner:
            raise ApiError(404, f"no batch with id {batch_id!r}", code="batch_not_found")
        return batch

    def cancel(self, owner: str, batch_id: str) -> Batch:
        batch = self.get(owner, batch_id)
        if batch.status in FINAL:
            raise ApiError(409, f"batch {batch_id} is {batch.status}: only a running batch can be cancelled",
                           code="batch_not_cancellable")
        if batch.status != "cancelling":
            batch.enter("cancelling")
            batch.stop.set()
        return batch

    def listed(self, owner: str, limit: int, after: str | None) -> dict:
        """The owner's batches, newest first, a page after the batch `after`."""
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be in [1, 100]", param="limit")
        batches = [b.card() for b in reversed(self._batches.values()) if b.owner == owner]
        return cursor_page(batches, limit, after, "batch")

    def _forget_old(self) -> None:
        finished = [b.id for b in self._batches.values() if b.status in FINAL]
        for batch_id in finished[:max(0, len(self._batches) + 1 - MAX_BATCHES)]:
            del self._batches[batch_id]

    async def _run(self, batch: Batch, data: bytes) -> None:
        lines, errors = parse_lines(data, batch.request.endpoint, self.priority)
        if errors:
            batch.errors = errors[:1000]
            batch.enter("failed")
            return
        batch.total = len(lines)
        if batch.status == "validating":
            batch.enter("in_progress")
        results = await asyncio.gather(*(self._answer(batch, line) for line in lines))
        batch.enter("finalizing")
        self._write_files(batch, results)
        expired = any(r["error"] and r["error"]["code"] == "batch_expired" for r in results)
        batch.enter("cancelled" if batch.stop.is_set() else "expired" if expired else "completed")

    async def _answer(self, batch: Batch, line: Line) -> dict:
        """The line's result object, its answer counted in the batch's request_counts."""
        line_id = f"batch_req_{uuid.uuid4().hex}"
        async with self._slot():
            result = await self._send(batch, line, line_id)
        ok = _succeeded(result)
        batch.completed += ok
        batch.failed += not ok
        return result

    async def _send(self, batch: Batch, line: Line, line_id: str) -> dict:
        headers = {"content-type": "application/json", "x-request-id": line_id}
        if batch.authorization:
            headers["authorization"] = batch.authorization
        wait_s = 0.5
        while True:
            stopped = _stopped(batch)
            if stopped:
                return _result(line_id, line.custom_id, None, _error(stopped, f"the batch was {stopped[6:]} before "
                                                                     "this request was sent", None))
            answer = await asgi_call.post(self.app, batch.request.endpoint, line.body, headers, batch.stop)
            if answer.status not in RETRY_STATUSES or batch.stop.is_set():
                return _result(line_id, line.custom_id, answer, None)
            wait_s = min(MAX_RETRY_WAIT_S, max(wait_s * 2, _retry_after(answer)))
            await asyncio.sleep(wait_s)

    def _slot(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on the running loop
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def _write_files(self, batch: Batch, results: list[dict]) -> None:
        done = [r for r in results if _succeeded(r)]
        failed = [r for r in results if not _succeeded(r)]
        for name, rows in (("output_file_id", done), ("error_file_id", failed)):
            if rows:
                data = "".join(json.dumps(row) + "\n" for row in rows).encode()
                stored = self.files.add(batch.owner, f"{batch.id}_{name[:-8]}.jsonl", OUTPUT_PURPOSE, data,
                                        output=True)
                setattr(batch, name, stored.id)


def _succeeded(result: dict) -> bool:
    return result["response"] is not None and 200 <= result["response"]["status_code"] < 300


def _stopped(batch: Batch) -> str | None:
    """The error code for a line not sent because the batch was cancelled or ran out of time."""
    if batch.stop.is_set():
        return "batch_cancelled"
    if time.time() >= batch.expires_at:
        return "batch_expired"
    return None


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
