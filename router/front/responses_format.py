"""Response bodies of OpenAI's Responses API: the `response` object and its stream events.

A response is one chat choice written another way, so `ResponseWriter` reads what the choice's
`ChatShape` writes (text deltas, tool calls held until complete, the finish reason, logprobs,
usage) and turns it into Responses' items: a `message` with one `output_text` part, or one
`function_call` item per call. Streamed, each item has its lifecycle of events
(`response.output_item.added`, `...content_part.added`, `...output_text.delta`, ... `done`),
numbered by `sequence_number`, between `response.created` / `response.in_progress` and
`response.completed` (`response.incomplete` when max_output_tokens cut the answer;
`error` and `response.failed` when the request fails after the stream began).
"""

from __future__ import annotations

import uuid

from router.front.completion import Finish, Piece
from router.front.http_errors import ApiError
from router.front.openai_format import ChatShape, usage
from router.front.responses_models import ResponsesRequest


def request_fields(body: ResponsesRequest, model: str, defaults: dict) -> dict:
    """What a response object repeats of its request (`defaults`: the sampling defaults that filled it in)."""
    text_format = body.text.format if body.text and body.text.format else {"type": "text"}
    return {"model": model, "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "previous_response_id": body.previous_response_id, "tools": body.tools or [],
            "tool_choice": body.tool_choice or "auto", "parallel_tool_calls": body.parallel_tool_calls,
            "temperature": defaults.get("temperature", 1.0) if body.temperature is None else body.temperature,
            "top_p": defaults.get("top_p", 1.0) if body.top_p is None else body.top_p,
            "top_logprobs": body.top_logprobs,
            "text": {"format": text_format}, "truncation": "disabled", "store": body.store,
            "metadata": body.metadata or {}, "user": body.user}


def answer_messages(output: list[dict]) -> list[dict]:
    """A response's output as the chat messages a later turn sees it by."""
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    if calls:
        return [{"role": "assistant", "content": None, "tool_calls": calls}]
    text = "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])
    return [{"role": "assistant", "content": text}]


class ResponseWriter:
    """One response, whole (`whole`) or as events (`opening`, `piece` per Piece, `closing`; `failed`)."""

    def __init__(self, shape: ChatShape, fields: dict):
        self.shape, self.fields = shape, fields
        self.output: list[dict] = []
        self.response: dict | None = None  # the last one written
        self._message_id = f"msg_{uuid.uuid4().hex}"
        self._text: str | None = None  # the streamed message's text; None while no message item is open
        self._logprobs: list[dict] = []
        self._sequence = 0

    def whole(self, pieces: list[Piece], finish: Finish) -> dict:
        choice = self.shape.whole_choice(pieces, finish)
        message, logprobs = choice["message"], (choice["logprobs"] or {}).get("content") or []
        calls = [_function_call(call) for call in message.get("tool_calls") or []]
        self.output = calls or [_message(self._message_id, message["content"] or "", logprobs)]
        return self._final(choice["finish_reason"], finish)

    def opening(self) -> list[dict]:
        response = self._response("in_progress")
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]

    def piece(self, piece: Piece) -> list[dict]:
        chunk = self.shape.chunk(piece, False)
        if chunk is None:
            return []
        choice = chunk["choices"][0]
        return self._text_delta(choice["delta"].get("content") or "", (choice["logprobs"] or {}).get("content") or [])

    def closing(self, finish: Finish) -> list[dict]:
        choice = self.shape.final_chunk(finish, False)["choices"][0]
        calls = choice["delta"].get("tool_calls") or []
        events = self._text_delta(choice["delta"].get("content") or "", [])
        if self._text is None and not calls:
            events += self._open_message()  # an empty answer is an empty message
        if self._text is not None:
            events += self._close_message()
        for call in calls:
            events += self._call_events(_function_call(call))
        response = self._final(choice["finish_reason"], finish)
        return events + [self._event(f"response.{response['status']}", response=response)]

    def failed(self, error: ApiError) -> list[dict]:
        self.response = {**self._response("failed"),
                         "error": {"code": error.code or error.type, "message": error.message}}
        return [self._event("error", code=error.code or error.type, message=error.message, param=error.param),
                self._event("response.failed", response=self.response)]

    def _final(self, reason: str, finish: Finish) -> dict:
        counts = usage([self.shape], [finish])
        self.response = self._response("incomplete" if reason == "length" else "completed", {
            "input_tokens": counts["prompt_tokens"], "input_tokens_details": counts["prompt_tokens_details"],
            "output_tokens": counts["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts["total_tokens"]})
        return self.response

    def _response(self, status: str, usage_field: dict | None = None) -> dict:
        return {"id": self.shape.id, "object": "response", "created_at": self.shape.created, "status": status,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "output": [dict(item) for item in self.output], "usage": usage_field, **self.fields}

    def _event(self, kind: str, **fields) -> dict:
        self._sequence += 1
        return {"type": kind, "sequence_number": self._sequence - 1, **fields}

    def _open_message(self) -> list[dict]:
        self._text = ""
        self.output.append(_message(self._message_id, "", [], "in_progress", parts=[]))
        where = {"item_id": self._message_id, "output_index": len(self.output) - 1}
        return [self._event("response.output_item.added", output_index=where["output_index"], item=self.output[-1]),
                self._event("response.content_part.added", **where, content_index=0, part=_text_part("", []))]

    def _text_delta(self, text: str, logprobs: list[dict]) -> list[dict]:
        if not text:
            return []
        events = self._open_message() if self._text is None else []
        self._text += text
        self._logprobs += logprobs
        return events + [self._event("response.output_text.delta", item_id=self._message_id,
                                     output_index=len(self.output) - 1, content_index=0, delta=text, logprobs=logprobs)]

    def _close_message(self) -> list[dict]:
        index = len(self.output) - 1
        self.output[index] = _message(self._message_id, self._text, self._logprobs)
        where = {"item_id": self._message_id, "output_index": index, "content_index": 0}
        return [self._event("response.output_text.done", **where, text=self._text, logprobs=self._logprobs),
                self._event("response.content_part.done", **where, part=self.output[index]["content"][0]),
                self._event("response.output_item.done", output_index=index, item=self.output[index])]

    def _call_events(self, call: dict) -> list[dict]:
        self.output.append(call)
        index, where = len(self.output) - 1, {"item_id": call["id"], "output_index": len(self.output) - 1}
        return [self._event("response.output_item.added", output_index=index,
                            item={**call, "arguments": "", "status": "in_progress"}),
                self._event("response.function_call_arguments.delta", **where, delta=call["arguments"]),
                self._event("response.function_call_arguments.done", **where, name=call["name"],
                            arguments=call["arguments"]),
                self._event("response.output_item.done", output_index=index, item=call)]


def _text_part(text: str, logprobs: list[dict]) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message(message_id: str, text: str, logprobs: list[dict], status: str = "completed",
             parts: list | None = None) -> dict:
    return {"type": "message", "id": message_id, "status": status, "role": "assistant",
            "content": [_text_part(text, logprobs)] if parts is None else parts}


def _function_call(call: dict) -> dict:
    """A chat tool call as a Responses function_call item."""
    return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": call["id"],
            "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": "completed"}
