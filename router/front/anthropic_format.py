"""Response bodies of Anthropic's Messages API: the `message` object and its stream events.

As for the Responses API (responses_format.py), `MessageWriter` reads what the answer's
`ChatShape` writes and turns it into content blocks: one `text` block, or one `tool_use` block
per call (`input`: the arguments as an object). `stop_reason` is `end_turn`, `max_tokens`,
`stop_sequence` (with `stop_sequence` set) or `tool_use`. Streamed: `message_start`, then per
block `content_block_start`, `content_block_delta` (`text_delta`, or the arguments whole as one
`input_json_delta`) and `content_block_stop`, then `message_delta` (stop reason, output
tokens) and `message_stop`; a failure after the stream began is an `error` event. Errors are
Anthropic's shape, `{"type": "error", "error": {"type", "message"}}` (`error_body`).
"""

from __future__ import annotations

import json

from router.front.completion import Finish, Piece
from router.front.http_errors import ApiError
from router.front.openai_format import ChatShape, usage

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               529: "overloaded_error"}


def error_body(error: ApiError) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(error.status, "api_error"), "message": error.message}}


class MessageWriter:
    """One message, whole (`whole`) or as events (`opening`, `piece` per Piece, `closing`; `failed`)."""

    def __init__(self, shape: ChatShape):
        self.shape = shape
        self._text: str | None = None  # the streamed text block's text; None while no block is open
        self._blocks = 0

    def whole(self, pieces: list[Piece], finish: Finish) -> dict:
        choice = self.shape.whole_choice(pieces, finish)
        message = choice["message"]
        calls = [_tool_use(call) for call in message.get("tool_calls") or []]
        content = calls or ([{"type": "text", "text": message["content"]}] if message["content"] else [])
        return {**self._message(content), **_stop(choice["finish_reason"], finish), "usage": self._usage(finish)}

    def opening(self) -> list[dict]:
        return [{"type": "message_start", "message": {**self._message([]), "stop_reason": None, "stop_sequence": None,
                                                      "usage": {"input_tokens": self.shape.num_prompt_tokens,
                                                                "output_tokens": 0}}}]

    def piece(self, piece: Piece) -> list[dict]:
        chunk = self.shape.chunk(piece, False)
        return [] if chunk is None else self._text_delta(chunk["choices"][0]["delta"].get("content") or "")

    def closing(self, finish: Finish) -> list[dict]:
        choice = self.shape.final_chunk(finish, False)["choices"][0]
        delta = choice["delta"]
        events = self._text_delta(delta.get("content") or "")
        if self._text is not None:
            events.append({"type": "content_block_stop", "index": self._blocks - 1})
        for call in map(_tool_use, delta.get("tool_calls") or []):
            index, arguments = self._blocks, json.dumps(call["input"])
            self._blocks += 1
            events += [{"type": "content_block_start", "index": index, "content_block": {**call, "input": {}}},
                       {"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": arguments}},
                       {"type": "content_block_stop", "index": index}]
        return events + [{"type": "message_delta", "delta": _stop(choice["finish_reason"], finish),
                          "usage": {"output_tokens": finish.num_completion_tokens}}, {"type": "message_stop"}]

    def failed(self, error: ApiError) -> list[dict]:
        return [error_body(error)]

    def _text_delta(self, text: str) -> list[dict]:
        if not text:
            return []
        events = []
        if self._text is None:
            self._text, self._blocks = "", self._blocks + 1
            events.append({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        self._text += text
        return events + [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}]

    def _message(self, content: list[dict]) -> dict:
        return {"id": self.shape.id, "type": "message", "role": "assistant", "model": self.shape.model,
                "content": content}

    def _usage(self, finish: Finish) -> dict:
        counts = usage([self.shape], [finish])
        return {"input_tokens": counts["prompt_tokens"], "output_tokens": counts["completion_tokens"],
                "cache_read_input_tokens": counts["prompt_tokens_details"]["cached_tokens"],
                "cache_creation_input_tokens": 0}


def _stop(reason: str, finish: Finish) -> dict:
    """stop_reason and stop_sequence from the chat finish reason."""
    if reason == "stop" and finish.stop_string is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": finish.stop_string}
    return {"stop_reason": STOP_REASONS.get(reason, "end_turn"), "stop_sequence": None}


def _tool_use(call: dict) -> dict:
    """A chat tool call as a tool_use block."""
    return {"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
            "input": json.loads(call["function"]["arguments"])}
