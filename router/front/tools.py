"""OpenAI tool calling (`tools`, `tool_choice`) by constrained decoding, for any model.

`tool_choice: "required"` constrains the answer to a JSON array of one or more calls, each
`{"name": <one of the tools>, "arguments": <that tool's parameters schema>}`; a named function
(`{"type": "function", "function": {"name": ...}}`) constrains it to that function's arguments.
The grammar (splitserve/engine/grammar.py) guarantees the calls parse and match their schemas;
the answer goes back as `message.tool_calls` with finish_reason "tool_calls". The tools are
described to the model in the system message (the served templates render no tools of their
own). `"none"` leaves the answer free and the tools out. `"auto"` (OpenAI's default when tools
are given) needs the model's own tool-call format and a parser for it, which this server does
not have: it is refused with a 400 that says what to send instead, never served as if no tools
had been given.
"""

from __future__ import annotations

import json
import uuid

from pydantic import BaseModel, ConfigDict, Field

from splitserve.engine.grammar import json_schema_grammar

MAX_TOOLS = 128
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
    """"required", the named FunctionDef, or None (no tools in play); InvalidTools otherwise."""
    if not tools or choice == "none":
        return None
    if len(tools) > MAX_TOOLS or any(t.type != "function" for t in tools):
        raise InvalidTools(f"tools must be at most {MAX_TOOLS} entries of type 'function'", "tools")
    if choice in (None, "auto"):
        raise InvalidTools("tool_choice 'auto' needs the model's own tool-call format, which this server does not "
                           "parse: send tool_choice 'required' (one or more calls), a named function, or 'none'",
                           "tool_choice")
    if choice == "required":
        return "required"
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    named = next((t.function for t in tools if t.function.name == name), None)
    if named is None:
        raise InvalidTools(f"tool_choice must be 'none', 'required' or a function among the tools, got {choice!r}",
                           "tool_choice")
    return named


def grammar(tools: list[Tool], mode: str | FunctionDef) -> str:
    """The grammar of the answer: a named function's arguments, or an array of calls ("required")."""
    if isinstance(mode, FunctionDef):
        return json_schema_grammar({**ONE_LINE, **mode.parameters})
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return json_schema_grammar({**ONE_LINE, "type": "array", "items": {"anyOf": calls}, "minItems": 1})


def system_text(tools: list[Tool], mode: str | FunctionDef) -> str:
    """What the system message says of the tools."""
    described = [{"name": t.function.name, "description": t.function.description or "",
                  "parameters": t.function.parameters} for t in tools]
    ask = (f"Call the function {mode.name}: answer with its arguments as a JSON object."
           if isinstance(mode, FunctionDef) else
           'Answer with a JSON array of calls, each {"name": <function>, "arguments": {...}}.')
    return f"You can call these functions:\n{json.dumps(described)}\n{ask}"


def with_tools(messages: list[dict], text: str) -> list[dict]:
    """The messages with the tools' text in the system message (a new one in front if there is none)."""
    if messages and messages[0]["role"] in ("system", "developer"):
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def tool_calls(text: str, mode: str | FunctionDef) -> list[dict]:
    """OpenAI's `tool_calls` from the constrained answer (ValueError if it is cut short: max_tokens, a stop)."""
    value = json.loads(text)
    calls = [(mode.name, text.strip())] if isinstance(mode, FunctionDef) else \
        [(c["name"], json.dumps(c["arguments"])) for c in value]
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": args}}
            for name, args in calls]
