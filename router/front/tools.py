"""OpenAI tool calling (`tools`, `tool_choice`) by constrained decoding, for any model.

`tool_choice: "required"` constrains the answer to a JSON array of one or more calls, each
`{"name": <one of the tools>, "arguments": <that tool's parameters schema>}`; a named function
(`{"type": "function", "function": {"name": ...}}`) constrains it to that function's arguments.
`"auto"` (OpenAI's default when tools are given) lets the model choose: its answer is either
text that does not start with CALL_MARKER, or CALL_MARKER and then such an array of calls (a
Lark grammar: free text and the marker's language, told apart by regex negation). The grammar
(splitserve/engine/grammar.py) guarantees that calls, once begun, parse and match their
schemas, read as closed (no arguments the parameters do not list: json_schemas.py); they go
back as `message.tool_calls` with finish_reason "tool_calls", text as `content`. The tools and
the format are described to the model in the system message (the served templates render no
tools of their own). `"none"` leaves the answer free and the tools out.
"""

from __future__ import annotations

import json
import re
import uuid

from pydantic import BaseModel, ConfigDict, Field

from router.front.json_schemas import closed
from splitserve.engine.grammar import json_schema_grammar

MAX_TOOLS = 128
CALL_MARKER = "<tool_call>"  # `auto`: an answer that starts with it is calls (Hermes' and Qwen's tag)
# calls are read by programs: JSON in json.dumps' one-line style, which leaves a model no whitespace to loop on;
# the spaces after ':' and ',' are what models write (SmolLM2 under separators without them: '{"city":".en-CH,"}',
# with them: '{"city": "Paris,"}'). A schema's own "x-guidance" wins.
ONE_LINE = {"x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}


class InvalidTools(ValueError):
    """A tools request this server refuses (the front turns it into a 400 naming `param`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = "function"
    function: FunctionDef


def chosen(tools: list[Tool], choice) -> str | FunctionDef | None:
    """"auto", "required", the named FunctionDef, or None (no tools in play); InvalidTools otherwise."""
    if not tools or choice == "none":
        return None
    if len(tools) > MAX_TOOLS or any(t.type != "function" for t in tools):
        raise InvalidTools(f"tools must be at most {MAX_TOOLS} entries of type 'function'", "tools")
    if choice in (None, "auto"):
        return "auto"
    if choice == "required":
        return "required"
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    named = next((t.function for t in tools if t.function.name == name), None)
    if named is None:
        raise InvalidTools(f"tool_choice must be 'none', 'required' or a function among the tools, got {choice!r}",
                           "tool_choice")
    return named


def grammar(tools: list[Tool], mode: str | FunctionDef, parallel: bool = True) -> str:
    """The grammar of the answer: a named function's arguments, an array of calls ("required"), or text
    or CALL_MARKER and an array of calls ("auto"); `parallel` False (OpenAI's `parallel_tool_calls`):
    one call at most. Arguments are objects of the parameters' keys only (json_schemas.closed)."""
    if isinstance(mode, FunctionDef):
        return json_schema_grammar({**ONE_LINE, **closed(mode.parameters)})
    if mode == "auto":
        return _auto_grammar(_calls_schema(tools, parallel))
    return json_schema_grammar(_calls_schema(tools, parallel))


def _calls_schema(tools: list[Tool], parallel: bool) -> dict:
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name},
                                               "arguments": closed(t.function.parameters)},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return {**ONE_LINE, "type": "array", "items": {"anyOf": calls}, "minItems": 1, **({} if parallel else {"maxItems": 1})}


def _auto_grammar(calls: dict) -> str:
    """Lark for llguidance: calls after the marker, or text (at least one character) that does not start
    with it (`&` and `~`: intersection and complement of regular languages)."""
    import llguidance

    marker = json.dumps(CALL_MARKER)
    lark = (f"start: calls | TEXT\ncalls: {marker} calls_json\ncalls_json: %json {json.dumps(calls)}\n"
            f"TEXT: /(?s:.+)/ & ~/(?s:{re.escape(CALL_MARKER)}.*)/\n")
    return llguidance.LLMatcher.grammar_from_lark(lark)


def system_text(tools: list[Tool], mode: str | FunctionDef) -> str:
    """What the system message says of the tools."""
    described = [{"name": t.function.name, "description": t.function.description or "",
                  "parameters": t.function.parameters} for t in tools]
    calls = 'a JSON array of calls, each {"name": <function>, "arguments": {...}}'
    if isinstance(mode, FunctionDef):
        ask = f"Call the function {mode.name}: answer with its arguments as a JSON object."
    elif mode == "auto":
        ask = f"To call functions, answer with {CALL_MARKER} followed by {calls}. Otherwise answer in plain text."
    else:
        ask = f"Answer with {calls}."
    return f"You can call these functions:\n{json.dumps(described)}\n{ask}"


def with_tools(messages: list[dict], text: str) -> list[dict]:
    """The messages with the tools' text in the system message (a new one in front if there is none)."""
    if messages and messages[0]["role"] in ("system", "developer"):
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def tool_calls(text: str, mode: str | FunctionDef) -> list[dict]:
    """OpenAI's `tool_calls` from the constrained answer (ValueError if it is cut short: max_tokens, a stop;
    or, "auto", if it is text)."""
    if mode == "auto":
        if not text.startswith(CALL_MARKER):
            raise ValueError("the answer is text, not calls")
        text = text[len(CALL_MARKER):]
    value = json.loads(text)
    calls = [(mode.name, text.strip())] if isinstance(mode, FunctionDef) else \
        [(c["name"], json.dumps(c["arguments"])) for c in value]
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": args}}
            for name, args in calls]
