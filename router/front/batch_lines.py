"""A batch's request (`POST /v1/batches`) and its input file's lines, checked before anything runs.

Each line of the JSONL file is `{"custom_id": "...", "method": "POST", "url": "<the batch's endpoint>",
"body": {...}}`; a file whose lines do not all pass fails the batch with errors naming each line (OpenAI's
shape: code, message, param, line). A body without a `priority` gets the batch priority (every batch
endpoint takes one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from router.front.http_errors import ApiError

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
COMPLETION_WINDOW_S = {"24h": 24 * 3600}
MAX_LINES = 50_000  # OpenAI's limit per batch
DEFAULT_PRIORITY = 1  # behind interactive requests (priority 0), which preempt batch lines when the engine is full


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
        return [], [line_error("invalid_json_line", "the file is not UTF-8 text", None)]
    lines, errors, seen = [], [], set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            line, error = _parse_line(raw, endpoint, seen, number, priority)
            lines += [line] if line else []
            errors += [error] if error else []
    if not lines and not errors:
        errors.append(line_error("empty_file", "the input file holds no requests", None))
    if len(lines) > MAX_LINES:
        errors.append(line_error("too_many_requests", f"a batch takes at most {MAX_LINES} requests, this file has "
                             f"{len(lines)}", None))
    return lines, errors


def _parse_line(raw: str, endpoint: str, seen: set, number: int, priority: int) -> tuple[Line | None, dict | None]:
    try:
        request = json.loads(raw)
    except ValueError:
        return None, line_error("invalid_json_line", "the line is not JSON", number)
    if not isinstance(request, dict):
        return None, line_error("invalid_request", "the line is not a JSON object", number)
    custom_id, body = request.get("custom_id"), request.get("body")
    problem = ("custom_id", "custom_id must be a non-empty string") if not isinstance(custom_id, str) or not custom_id \
        else ("custom_id", f"custom_id {custom_id!r} is used twice") if custom_id in seen \
        else ("method", "method must be POST") if request.get("method") != "POST" \
        else ("url", f"url must be the batch's endpoint {endpoint}") if request.get("url") != endpoint \
        else ("body", "body must be a JSON object") if not isinstance(body, dict) \
        else ("body.stream", "a batch answers whole: stream must be false") if body.get("stream") \
        else None
    if problem:
        return None, line_error("invalid_request", problem[1], number, problem[0])
    seen.add(custom_id)
    body.setdefault("priority", priority)
    return Line(custom_id, json.dumps(body).encode()), None


def line_error(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}
