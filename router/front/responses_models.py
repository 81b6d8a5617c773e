"""The request body of OpenAI's Responses API (`POST /v1/responses`), read as a chat completion.

A Responses request is a chat request in other words: `input` (a string, or items: messages,
earlier `function_call`s and their `function_call_output`s) and `instructions` (a system
message in front) become `messages`; `max_output_tokens`, `text.format` and the flat function
`tools` become `max_completion_tokens`, `response_format` and chat's nested tools. The chat
request then does the validating and the sampling (openai_models.py), so both endpoints
accept and refuse the same things. `previous_response_id` puts a stored conversation in front
(responses_store.py). What cannot be honoured (background runs, built-in tools, images and
files, `truncation: auto`, server-side conversations and prompts) is a 400 naming the field.
splitserve's extensions (`documents`, `seed`, `stop`, `top_k`, ...) pass through as on chat.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict

from router.front.openai_models import (OLDER_STRUCTURED, TOKEN_LIMITS, ChatCompletionRequest, InvalidRequest,
                                        chat_request, parse_body)

LOGPROBS_INCLUDE = "message.output_text.logprobs"
# chat fields a Responses request may carry as they are (splitserve's and vLLM's extensions; those refused on
# chat are refused here too)
EXTENSIONS = ("documents", "seed", "stop", "stop_token_ids", "top_k", "min_p", "min_tokens", "ignore_eos", "priority",
              "logit_bias", "presence_penalty", "frequency_penalty", "repetition_penalty", "structured_outputs",
              *OLDER_STRUCTURED, *TOKEN_LIMITS, "cache_salt")
# a chat field whose error names the Responses field it came from
RESPONSES_PARAM = {"messages": "input", "max_completion_tokens": "max_output_tokens", "response_format": "text.format",
                   "tools": "tools", "tool_choice": "tool_choice"}
TEXT_PARTS = ("input_text", "output_text", "text")


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: dict | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    include: list[str] | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    background: bool = False
    truncation: str | None = None
    conversation: str | dict | None = None
    prompt: dict | None = None

    @classmethod
    def parse(cls, body: bytes) -> "ResponsesRequest":
        return parse_body(cls, body)

    def check_supported(self) -> None:
        refused = {"background": self.background, "conversation": self.conversation, "prompt": self.prompt,
                   "use_beam_search": (self.model_extra or {}).get("use_beam_search")}  # chat's and completions
        for name, value in refused.items():
            if value:
                raise InvalidRequest(f"{name} is not supported by this server", name)
        if self.truncation not in (None, "disabled"):
            raise InvalidRequest("truncation must be 'disabled' (a prompt too long for the context is refused)",
                                 "truncation")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise InvalidRequest(f"max_output_tokens must be at least 1, got {self.max_output_tokens}",
                                 "max_output_tokens")
        if len(self.metadata or {}) > 16:
            raise InvalidRequest("metadata holds at most 16 keys", "metadata")

    @property
    def logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or ()) or self.top_logprobs is not None

    def input_messages(self) -> list[dict]:
        """`input` as chat messages (without the instructions)."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        messages: list[dict] = []
        for i, item in enumerate(self.input):
            _add_item(messages, item, f"input.{i}")
        if not messages:
            raise InvalidRequest("input must hold at least one message", "input")
        return messages

    def input_items(self) -> list[dict]:
        """`input` as the items `GET /v1/responses/{id}/input_items` lists (after input_messages() accepted it):
        each with an id, messages with their text as one input_text (or, an assistant's, output_text) part."""
        given = [{"role": "user", "content": self.input}] if isinstance(self.input, str) else self.input
        items = []
        for item in given:
            kind = item.get("type", "message")
            if kind == "message":
                part = "output_text" if item["role"] == "assistant" else "input_text"
                items.append({"type": "message", "id": f"msg_{uuid.uuid4().hex}", "role": item["role"],
                              "status": "completed", "content": [{"type": part, "text": text_of(item.get("content"),
                                                                                                "input")}]})
            elif kind in ("function_call", "function_call_output"):
                prefix = "fc" if kind == "function_call" else "fco"
                items.append({**item, "id": item.get("id") or f"{prefix}_{uuid.uuid4().hex}", "status": "completed"})
        return items

    def chat_request(self, conversation: list[dict]) -> ChatCompletionRequest:
        """The chat request this one amounts to; `conversation`: a stored conversation (or none) and then
        input_messages()."""
        instructions = [{"role": "system", "content": self.instructions}] if self.instructions else []
        body = {name: value for name, value in (self.model_extra or {}).items() if name in EXTENSIONS}
        body.update(model=self.model, stream=self.stream, messages=instructions + conversation,
                    max_completion_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p,
                    logprobs=self.logprobs, top_logprobs=self.top_logprobs,
                    parallel_tool_calls=self.parallel_tool_calls,
                    tools=[_chat_tool(t, f"tools.{i}") for i, t in enumerate(self.tools)] if self.tools else None,
                    tool_choice=_chat_tool_choice(self.tool_choice), user=self.user,
                    response_format=_chat_format(self.text.format) if self.text and self.text.format else None)
        return chat_request(body, RESPONSES_PARAM)


def _add_item(messages: list[dict], item: dict, where: str) -> None:
    """One input item as chat messages: a message, a function call (joined to the assistant message of the
    calls just before it) or a call's output (a tool message). Reasoning items carry nothing to show."""
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(f"{where}: role must be user, assistant, system or developer, got {role!r}", where)
        messages.append({"role": role, "content": text_of(item.get("content"), f"{where}.content")})
    elif kind == "function_call":
        call = {"id": _field(item, "call_id", where), "type": "function",
                "function": {"name": _field(item, "name", where), "arguments": _field(item, "arguments", where)}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        _field(item, "call_id", where)
        messages.append({"role": "tool", "content": text_of(item.get("output"), f"{where}.output")})
    elif kind != "reasoning":
        raise InvalidRequest(f"{where}: input items of type {kind!r} are not supported (messages, function_call and "
                             "function_call_output are)", where)


def _field(item: dict, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{name} must be a string", f"{where}.{name}")
    return value


def text_of(content, param: str, kinds: tuple[str, ...] = TEXT_PARTS) -> str:
    """A message's text: a string, or content parts of these `kinds` joined (the Responses API's input_text /
    output_text, the Messages API's text blocks); anything else is a 400 naming `param`."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise InvalidRequest(f"{param} must be a string or a list of content parts", param)
    others = sorted({str(part.get("type")) for part in content} - set(kinds))
    if others:
        raise InvalidRequest(f"{param}: only text content is supported, got {', '.join(others)}", param)
    return "".join(str(part.get("text") or "") for part in content)


def _chat_tool(tool: dict, where: str) -> dict:
    """A Responses function tool ({type, name, description, parameters, strict}) in chat's nested form."""
    if tool.get("type") != "function":
        raise InvalidRequest(f"{where}: only function tools are supported, got {tool.get('type')!r}", where)
    function = {key: tool[key] for key in ("name", "description", "parameters") if tool.get(key) is not None}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice):
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(f"tool_choice must be 'none', 'auto', 'required' or a function, got {choice!r}",
                         "tool_choice")


def _chat_format(fmt: dict) -> dict:
    """`text.format` ({type, name, schema, strict} flat) as chat's response_format."""
    if fmt.get("type") != "json_schema":
        return {"type": fmt.get("type")}
    schema = {key: fmt[key] for key in ("name", "schema", "strict") if key in fmt}
    return {"type": "json_schema", "json_schema": schema}
