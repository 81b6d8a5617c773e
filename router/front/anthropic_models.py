"""The request body of Anthropic's Messages API (`POST /v1/messages`), read as a chat completion.

As with the Responses API (responses_models.py), a Messages request is a chat request in other
words, and the chat request does the validating and sampling: `system` (a string or text
blocks) becomes a system message; each message's content blocks become chat messages (text;
an assistant's `tool_use` blocks its tool calls; a user's `tool_result` blocks tool messages,
in front of its text); `max_tokens` (required), `stop_sequences`, `temperature`, `top_p`,
`top_k`, the tools (`input_schema` as parameters), `tool_choice` (auto, any = required, tool
= a named function, none; `disable_parallel_tool_use`) and `output_config.format` (a JSON schema:
a strict json_schema response_format) map to theirs. What cannot be honoured
(images, documents, extended thinking) is a 400 naming the field. `documents` and the other
splitserve / vLLM extensions pass through as on the Responses API.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict

from router.front.openai_models import ChatCompletionRequest, InvalidRequest, chat_request, parse_body
from router.front.responses_models import EXTENSIONS, text_of

# a chat field whose error names the Messages field it came from
MESSAGES_PARAM = {"max_completion_tokens": "max_tokens", "stop": "stop_sequences"}


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = None  # required on /v1/messages, not on /v1/messages/count_tokens
    messages: list[dict]
    system: str | list[dict] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[dict] | None = None
    tool_choice: dict | None = None
    metadata: dict | None = None
    thinking: dict | None = None
    output_config: dict | None = None  # its `format` (a JSON schema) constrains the answer; `effort` is not read

    @classmethod
    def parse(cls, body: bytes) -> "MessagesRequest":
        return parse_body(cls, body)

    def check_supported(self, counting: bool = False) -> None:
        if self.max_tokens is None and not counting:
            raise InvalidRequest("max_tokens is required", "max_tokens")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens")
        if self.thinking and self.thinking.get("type") != "disabled":
            raise InvalidRequest("extended thinking is not supported by this server", "thinking")
        if not self.messages:
            raise InvalidRequest("messages must hold at least one message", "messages")

    def chat_messages(self) -> list[dict]:
        system = [{"role": "system", "content": text_of(self.system, "system", ("text",))}] if self.system else []
        messages: list[dict] = []
        for i, message in enumerate(self.messages):
            messages += _chat_messages(message, f"messages.{i}")
        return system + messages

    def chat_request(self) -> ChatCompletionRequest:
        extensions = set(EXTENSIONS) - {"stop"}  # stop_sequences are the stop strings here
        body = {name: value for name, value in (self.model_extra or {}).items() if name in extensions}
        choice = self.tool_choice or {}
        body.update(model=self.model, stream=self.stream, messages=self.chat_messages(),
                    max_completion_tokens=self.max_tokens, stop=self.stop_sequences, temperature=self.temperature,
                    top_p=self.top_p, top_k=self.top_k, user=(self.metadata or {}).get("user_id"),
                    tools=[_chat_tool(t, f"tools.{i}") for i, t in enumerate(self.tools)] if self.tools else None,
                    tool_choice=_chat_tool_choice(self.tool_choice),
                    parallel_tool_calls=not choice.get("disable_parallel_tool_use", False),
                    response_format=self._response_format())
        return chat_request(body, MESSAGES_PARAM)


    def _response_format(self) -> dict | None:
        """`output_config.format` ({type: json_schema, schema}) as chat's strict json_schema response_format."""
        fmt = (self.output_config or {}).get("format")
        if fmt is None:
            return None
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("output_config.format must be {type: json_schema, schema: {...}}",
                                 "output_config.format")
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def _chat_messages(message: dict, where: str) -> list[dict]:
    """One Messages message as chat messages: a user's tool results become tool messages (before its text),
    an assistant's tool_use blocks its tool calls."""
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"{where}.role must be user or assistant, got {role!r}", f"{where}.role")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise InvalidRequest(f"{where}.content must be a string or a list of content blocks", f"{where}.content")
    kinds = {block.get("type") for block in content}
    allowed = {"text", "tool_result"} if role == "user" else {"text", "tool_use", "thinking", "redacted_thinking"}
    if kinds - allowed:
        raise InvalidRequest(f"{where}: {role} content blocks of type {', '.join(sorted(map(str, kinds - allowed)))} "
                             "are not supported", f"{where}.content")
    text = "".join(str(block.get("text") or "") for block in content if block.get("type") == "text")
    if role == "assistant":
        calls = [_tool_call(block, f"{where}.content") for block in content if block.get("type") == "tool_use"]
        return [{"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}]
    results = [{"role": "tool", "content": text_of(block.get("content") or "", f"{where}.content", ("text",))}
               for block in content if block.get("type") == "tool_result"]
    return results + ([{"role": "user", "content": text}] if text or not results else [])


def _tool_call(block: dict, where: str) -> dict:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidRequest(f"{where}: a tool_use block needs a string id and name", where)
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(block.get("input") or {})}}


def _chat_tool(tool: dict, where: str) -> dict:
    """A Messages tool ({name, description, input_schema}) as a chat function tool."""
    if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
        raise InvalidRequest(f"{where}: only client tools with an input_schema are supported", where)
    function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: dict | None):
    kind = (choice or {}).get("type", "auto")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(f"tool_choice must be auto, any, tool (with a name) or none, got {choice!r}", "tool_choice")
