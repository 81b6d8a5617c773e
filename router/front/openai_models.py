"""Request bodies of the OpenAI-compatible API, validated, and their engine SamplingParams.

Unknown fields are ignored, as OpenAI servers do. Fields we cannot honour (suffix, the deprecated functions /
function_call, vLLM's prompt_embeds, logits_processors and chat echo, and fields a beam search does not take) are
refused with a 400 that names them, never silently dropped. `logit_bias`, completions' `echo` (prompt logprobs) and
several prompts, `response_format` json_object / json_schema and vLLM's structured outputs (`structured_outputs`,
`guided_*`: a grammar, splitserve/engine/grammar.py) and tools (auto, required or a named function: tools.py) are
honoured. vLLM's extensions `ignore_eos`, `min_tokens`, `top_k`, `min_p`, `repetition_penalty`, `stop_token_ids`,
`allowed_token_ids`, `bad_words` (splitserve/engine/token_limits.py), `truncate_prompt_tokens`, `add_special_tokens`
and `prompt_logprobs` are accepted, and `use_beam_search` (beam_search.py); `documents` is splitserve's RAG
extension (retrieved passages, placed before the prompt, or at the start of the last user message inside the chat
template).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from splitserve.engine import SamplingParams
from splitserve.engine.sampling import MAX_TOP_LOGPROBS, check_priority
from splitserve.engine.tokenizer import ChatFormat
from splitserve.engine.grammar import choice_grammar, json_schema_grammar, lark_grammar, regex_grammar
from router.front import tools
from router.front.json_schemas import closed
from router.front.tools import Tool
from router.front.beam_search import MAX_BEAM_WIDTH
from router.front.intake import check_truncate
from router.front.structural_tags import structural_tag_grammar

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's legacy completions default
MAX_CHOICES = 16  # n: each choice is a request of its own in the cluster
MAX_PROMPT_CHOICES = 64  # prompts x n of one completions request


class InvalidRequest(ValueError):
    """A request the API refuses (400); `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def parse_body(model: type[BaseModel], body: bytes):
    """A request body as `model`; InvalidRequest naming the first field that does not validate."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{param or 'body'}: {first['msg']}", param) from None


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: with include_usage, every chunk carries its choice's usage so far


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    json_schema: dict = Field(default_factory=dict, alias="schema")  # `schema` shadows a BaseModel attribute
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: text, json_object (any JSON object) or json_schema (values of its schema;
    with `strict: true` its objects are closed: json_schemas.py)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    json_schema: JsonSchema | None = None
    structures: list | None = None  # type structural_tag (vLLM's): structural_tags.py
    triggers: list | None = None

    def check(self) -> None:
        if self.type not in ("text", "json_object", "json_schema", "structural_tag"):
            raise InvalidRequest("response_format type must be text, json_object, json_schema or structural_tag, "
                                 f"got {self.type!r}", "response_format")
        if self.type == "json_schema" and self.json_schema is None:
            raise InvalidRequest("response_format json_schema needs its json_schema.schema", "response_format")

    def grammar(self) -> str | None:
        """llguidance's grammar for it (None: free text); ValueError for a schema that is not JSON."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return json_schema_grammar(None)
        if self.type == "structural_tag":
            return checked_structural_tag({"structures": self.structures, "triggers": self.triggers},
                                          "response_format")
        schema = self.json_schema.json_schema
        return json_schema_grammar(closed(schema) if self.json_schema.strict else schema)


class StructuredOutputs(BaseModel):
    """vLLM's structured outputs (`structured_outputs`, or the older `guided_json` / `guided_regex` /
    `guided_choice` / `guided_grammar`): exactly one of a JSON schema (or JSON text of one), a regex, a
    choice of strings, a Lark grammar (llguidance's, as vLLM's guidance backend reads it; not GBNF) or
    `json_object: true`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_schema: dict | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict | None = None  # structural_tags.py

    def grammar_text(self, param: str) -> str:
        """llguidance's grammar; InvalidRequest unless exactly one constraint is given."""
        given = [name for name, value in self if value is not None and value is not False]
        if len(given) != 1:
            raise InvalidRequest(f"{param}: give exactly one of json, regex, choice, grammar, structural_tag or "
                                 "json_object", param)
        if self.structural_tag is not None:
            return checked_structural_tag(self.structural_tag, param)
        if self.json_object:
            return json_schema_grammar(None)
        if self.json_schema is not None:
            return json_schema_grammar(_schema(self.json_schema, param))
        if self.choice is not None:
            if not self.choice:
                raise InvalidRequest(f"{param}: choice needs at least one string", param)
            return choice_grammar(self.choice)
        if self.regex is not None:
            return regex_grammar(self.regex)
        return lark_grammar(self.grammar)


def checked_structural_tag(spec: dict | str, param: str) -> str:
    """Its grammar (structural_tags.py), or a 400 naming `param`."""
    try:
        return structural_tag_grammar(spec)
    except ValueError as exc:
        raise InvalidRequest(f"{param}: {exc}", param) from None


def _schema(value: dict | str, param: str) -> dict:
    if isinstance(value, dict):
        return value
    try:
        schema = json.loads(value)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param}: a JSON schema is a JSON object", param)
    return schema


SAMPLING_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")  # a model may recommend these
# vLLM's older fields of structured outputs -> the structured_outputs key each stands for
OLDER_STRUCTURED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                    "guided_grammar": "grammar", "structural_tag": "structural_tag"}
# what a use_beam_search request may set (beam_search.py); any other field that changes the output is a 400
BEAM_SEARCH_FIELDS = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "n", "use_beam_search",
                      "length_penalty", "ignore_eos", "temperature", "seed", "user", "priority",
                      "truncate_prompt_tokens", "stream", "cache_salt", "return_token_ids", "add_generation_prompt",
                      "continue_final_message", "chat_template_kwargs", "add_special_tokens"}
# vLLM's fields honoured here that chat's and completions' bodies carry as they are (Responses takes them too)
TOKEN_LIMITS = ("bad_words", "allowed_token_ids", "truncate_prompt_tokens")


def checked_truncate(truncate: int | None, documents=()) -> None:
    """intake.check_truncate's refusal as a 400 naming `truncate_prompt_tokens`."""
    try:
        check_truncate(truncate, documents)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "truncate_prompt_tokens") from None


def checked_priority(priority: int) -> None:
    """A 400 naming `priority` for one out of range."""
    try:
        check_priority(priority)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "priority") from None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM's: generation ends on any of these (kept in the output)
    n: int | None = None
    max_tokens: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    priority: int = 0  # vLLM's: lower runs sooner, and preempts running requests of a higher value
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string, as JSON keys are) -> bias
    response_format: ResponseFormat | None = None
    documents: list[str] | None = None
    user: str | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    cache_salt: str | None = None  # vLLM's: the prompt shares cached KV only with requests of the same salt
    return_token_ids: bool = False  # vLLM's: the prompt's and the output's token ids go with the text
    return_tokens_as_token_ids: bool = False  # vLLM's: logprobs name tokens "token_id:N"
    use_beam_search: bool = False  # vLLM's: n beams of a beam search (beam_search.py) instead of n samples
    length_penalty: float = 1.0  # vLLM's, for beam search: scores are cumulative logprob / length ** this
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    bad_words: list[str] | None = None
    allowed_token_ids: list[int] | None = None
    truncate_prompt_tokens: int | None = None
    structural_tag: str | dict | None = None
    prompt_logprobs: int | None = None  # vLLM's: each prompt token's logprob and rank, and the top k there
    logits_processors: list | None = None  # vLLM's server-side processors by name: refused (none is served)

    @classmethod
    def parse(cls, body: bytes):
        return parse_body(cls, body)

    @property
    def num_choices(self) -> int:
        return 1 if self.n is None else self.n

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and self.stream_options.continuous_usage_stats

    def check_supported(self) -> None:
        if not 1 <= self.num_choices <= MAX_CHOICES:
            raise InvalidRequest(f"n must be in [1, {MAX_CHOICES}], got {self.n}", "n")
        if self.response_format is not None:
            self.response_format.check()
        if self.structured is not None and self.response_format is not None and self.response_format.type != "text":
            raise InvalidRequest("response_format and structured outputs constrain the answer twice: send one",
                                 "response_format")
        checked_priority(self.priority)
        checked_truncate(self.truncate_prompt_tokens, self.documents)
        self._check_prompt_logprobs()
        if self.logits_processors:
            raise InvalidRequest("logits_processors are not supported: no custom logits processor is served",
                                 "logits_processors")
        if self.use_beam_search:
            self._check_beam_search()
        bad = [key for key in self.logit_bias or {} if not (key.isascii() and key.isdigit())]
        if bad:
            raise InvalidRequest(f"logit_bias keys must be token ids, got {bad[0]!r}", "logit_bias")

    def _check_prompt_logprobs(self) -> None:
        k = self.prompt_logprobs
        if k is None:
            return
        if not 0 <= k <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"prompt_logprobs must be in [0, {MAX_TOP_LOGPROBS}] (-1, the whole vocabulary, is "
                                 f"not served), got {k}", "prompt_logprobs")
        if self.stream:
            raise InvalidRequest("prompt_logprobs are not available when stream is true", "prompt_logprobs")

    def _check_beam_search(self) -> None:
        if not 1 <= self.num_choices <= MAX_BEAM_WIDTH:
            raise InvalidRequest(f"n (the beam width) must be in [1, {MAX_BEAM_WIDTH}] with use_beam_search, "
                                 f"got {self.n}", "n")
        if self.stream:
            raise InvalidRequest("use_beam_search answers whole: stream must be false", "stream")
        if not math.isfinite(self.length_penalty):
            raise InvalidRequest(f"length_penalty must be finite, got {self.length_penalty}", "length_penalty")
        extra = sorted(name for name in self.model_fields_set - BEAM_SEARCH_FIELDS
                       if getattr(self, name) != type(self).model_fields[name].default)
        if extra:
            raise InvalidRequest(f"{extra[0]} does not go with use_beam_search (it takes n, max_tokens, ignore_eos "
                                 "and length_penalty)", extra[0])

    @property
    def structured(self) -> tuple[StructuredOutputs, str] | None:
        """vLLM's structured outputs and the field they came in, or None."""
        older = {field: value for field in OLDER_STRUCTURED if (value := getattr(self, field)) is not None}
        if older and self.structured_outputs is not None:
            raise InvalidRequest("send structured_outputs or the older guided_* / structural_tag fields, not both",
                                 "structured_outputs")
        if older:
            outputs = StructuredOutputs.model_validate({OLDER_STRUCTURED[f]: value for f, value in older.items()})
            return outputs, next(iter(older))
        return None if self.structured_outputs is None else (self.structured_outputs, "structured_outputs")

    def _grammar(self) -> str | None:
        if self.structured is not None:
            outputs, param = self.structured
            return outputs.grammar_text(param)
        return self.response_format.grammar() if self.response_format else None

    def sampling(self, max_tokens: int, logprobs: int | None, defaults: dict | None = None) -> SamplingParams:
        """Engine parameters; ValueError (-> 400) for values out of range. `defaults`: sampling settings for
        what the request leaves out (the model's recommended ones: Frontend.sampling_defaults), else OpenAI's."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        sent = {name: value for name in SAMPLING_DEFAULTS if (value := getattr(self, name)) is not None}
        chosen = {**(defaults or {}), **sent}
        return SamplingParams(
            max_tokens=max_tokens, temperature=chosen.get("temperature", 1.0), top_p=chosen.get("top_p", 1.0),
            top_k=max(0, chosen.get("top_k", 0)), min_p=chosen.get("min_p", 0.0),
            repetition_penalty=chosen.get("repetition_penalty", 1.0), seed=self.seed,
            stop=tuple(stop), include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens, stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos, logprobs=logprobs, min_tokens=self.min_tokens,
            presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=self._logit_bias(), grammar=self._grammar(), priority=self.priority,
            allowed_token_ids=tuple(self.allowed_token_ids or ()), bad_words=tuple(self.bad_words or ()),
            cache_salt=self.cache_salt)

    def _logit_bias(self) -> dict[int, float]:
        return {int(key): value for key, value in (self.logit_bias or {}).items()}


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    add_special_tokens: bool = True  # vLLM's: the tokenizer's special tokens (e.g. BOS) go with a text prompt
    prompt_embeds: str | list | None = None  # vLLM's prompt as embeddings: refused
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.suffix:
            raise InvalidRequest("suffix is not supported", "suffix")
        if self.prompt_embeds is not None:
            raise InvalidRequest("prompt_embeds are not supported: send the prompt as text or token ids",
                                 "prompt_embeds")
        if self.best_of is not None and not self.num_choices <= self.best_of <= MAX_CHOICES:
            raise InvalidRequest(f"best_of must be in [n, {MAX_CHOICES}] (n = {self.num_choices}), got {self.best_of}",
                                 "best_of")
        if self.samples_more and (self.stream or self.scores_only):
            raise InvalidRequest("best_of > n answers whole, with generated tokens: stream must be false and "
                                 "max_tokens at least 1", "best_of")
        if self.echo and self.logprobs is not None and self.prompt_logprobs not in (None, self.logprobs):
            raise InvalidRequest("echo with logprobs scores the prompt with the same top-k as prompt_logprobs: "
                                 "send one, or the same number", "prompt_logprobs")

    @property
    def num_samples(self) -> int:
        """Completions sampled per prompt: best_of (OpenAI's: the n best of them are returned), else n."""
        return self.best_of or self.num_choices

    @property
    def samples_more(self) -> bool:
        return self.num_samples > self.num_choices

    def prompt_inputs(self) -> list[dict]:
        """Frontend.prompt_ids keywords of each prompt: `prompt` (text) or `token_ids`. A list of texts or of
        token-id lists is several prompts, each with its `n` choices."""
        prompt = self.prompt
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
        if len(prompts) * self.num_samples > MAX_PROMPT_CHOICES:
            raise InvalidRequest(f"{len(prompts)} prompts x {self.num_samples} samples (n, or best_of) exceeds "
                                 f"{MAX_PROMPT_CHOICES}", "prompt")
        return [{"prompt": p} if isinstance(p, str) else {"token_ids": list(p)} for p in prompts]

    @property
    def scores_only(self) -> bool:
        """echo with max_tokens 0 (how lm-evaluation-harness scores a text): the prompt and its logprobs alone."""
        return self.echo and self.max_tokens == 0

    def sampling_params(self, defaults: dict | None = None) -> SamplingParams:
        """With echo and logprobs the prompt's tokens are scored too (prompt_logprobs); max_tokens 0 (with echo)
        generates one token, which the response leaves out."""
        max_tokens = DEFAULT_COMPLETION_MAX_TOKENS if self.max_tokens is None else self.max_tokens
        logprobs = self.logprobs if not self.samples_more else self.logprobs or 0  # best_of ranks by them
        params = self.sampling(1 if self.scores_only else max_tokens, logprobs, defaults)
        echoed = self.logprobs if self.echo else None
        return replace(params, prompt_logprobs=echoed if echoed is not None else self.prompt_logprobs)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict] | None = None  # an assistant's earlier calls: given to the model as their JSON

    def text(self) -> str:
        if isinstance(self.content, list):
            kinds = sorted({p.type for p in self.content} - {"text"})
            if kinds:
                raise InvalidRequest(f"only text content is supported, got {', '.join(kinds)}", "messages")
            return "".join(p.text or "" for p in self.content)
        calls = [c.get("function") for c in self.tool_calls or []]
        return (self.content or "") + (json.dumps(calls) if calls else "")


class ChatTemplateOptions(BaseModel):
    """vLLM's chat template options (of chat requests and /tokenize): tokenizer.ChatFormat's fields."""

    model_config = ConfigDict(extra="ignore")

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict | None = None

    def chat_format(self) -> ChatFormat:
        """How the messages become the prompt; InvalidRequest naming the field for a bad combination."""
        try:
            return ChatFormat(self.add_generation_prompt, self.continue_final_message, self.chat_template_kwargs or {})
        except ValueError as exc:
            param = "chat_template_kwargs" if "variables" in str(exc) else "continue_final_message"
            raise InvalidRequest(str(exc), param) from None


class ChatCompletionRequest(_Request, ChatTemplateOptions):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = True
    functions: list | None = None  # OpenAI's deprecated tools: refused by name rather than ignored
    function_call: str | dict | None = None
    chat_template: str | None = None  # a template sent with the request: refused (the model's is served)
    add_special_tokens: bool = False  # vLLM's: the tokenizer's special tokens too (the template has its own)
    echo: bool = False  # vLLM's chat echo (the last message in front of the answer): refused

    def check_supported(self) -> None:
        super().check_supported()
        if self.chat_template is not None:
            raise InvalidRequest("chat_template is not supported: the model's own template is used", "chat_template")
        if self.echo:
            raise InvalidRequest("echo is not supported on chat completions (completions take it)", "echo")
        self.chat_format()
        for legacy in ("functions", "function_call"):
            if getattr(self, legacy) is not None:
                raise InvalidRequest(f"{legacy} is OpenAI's deprecated form of tool calling and is not supported: "
                                     "send tools and tool_choice", legacy)
        if self.tool_mode is not None and self.response_format is not None and self.response_format.type != "text":
            raise InvalidRequest("tools and a response_format constrain the answer twice: send one", "response_format")
        if self.tool_mode is not None and self.structured is not None:
            raise InvalidRequest("tools and structured outputs constrain the answer twice: send one",
                                 self.structured[1])
        if not self.messages:
            raise InvalidRequest("messages must hold at least one message", "messages")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", "top_logprobs")

    @property
    def tool_mode(self):
        """tools.chosen(): "auto", "required", the named function, or None; InvalidRequest for what is refused."""
        try:
            return tools.chosen(self.tools or [], self.tool_choice)
        except tools.InvalidTools as exc:
            raise InvalidRequest(str(exc), exc.param) from None

    def chat_messages(self) -> list[dict]:
        messages = [{"role": m.role, "content": m.text()} for m in self.messages]
        mode = self.tool_mode
        return messages if mode is None else tools.with_tools(messages, tools.system_text(self.tools, mode))

    def sampling_params(self, room: int, defaults: dict | None = None) -> SamplingParams:
        """`room`: tokens left in the context after the prompt, the default maximum; `defaults`: see `sampling`."""
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        params = replace(self.sampling(room if max_tokens is None else max_tokens, logprobs, defaults),
                         prompt_logprobs=self.prompt_logprobs)
        mode = self.tool_mode
        return params if mode is None else replace(params, grammar=tools.grammar(self.tools, mode,
                                                                                 self.parallel_tool_calls))


def chat_request(body: dict, renamed: dict[str, str]) -> ChatCompletionRequest:
    """The chat request another API's request amounts to, validated and checked; an error names the field by
    the other API's name (`renamed`: chat field -> its name there)."""
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        param = ".".join([renamed.get(loc[0], loc[0])] + loc[1:]) if loc else None
        raise InvalidRequest(f"{param or 'body'}: {first['msg']}", param) from None
    chat.check_supported()
    return chat
