"""Tokenizer of an HF model folder or a GGUF file, with its chat template.

Built on the `tokenizers` library and jinja2 (no transformers at run time). A folder gives
`tokenizer.json`, `tokenizer_config.json` (special tokens, `added_tokens_decoder`) and the
chat template from `chat_template.jinja`, `chat_template.json` or `tokenizer_config.json`, in
that order, as transformers reads them; EOS ids come from `generation_config.json` (a list
there makes `<|im_end|>` end a ChatML answer). Templates render in the sandbox transformers
uses (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `strftime_now`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from splitserve.engine.errors import ModelFormatError
from splitserve.engine.gguf_reader import is_gguf_path, open_gguf


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # older tokenizer_config.json stores AddedToken dicts
        return value.get("content")
    return value


RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "add_generation_prompt", "bos_token", "eos_token", "unk_token",
                                         "pad_token"})


@dataclass(frozen=True)
class ChatFormat:
    """How messages become a chat prompt, as transformers' apply_chat_template takes it: the assistant's
    generation prompt after them, or (`continue_final_message`) the last message left open for the model to
    go on with; `template_kwargs`: more variables for the template (e.g. Qwen3's `enable_thinking`)."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true "
                             "(the final message is continued, not answered)")
        reserved = sorted(set(self.template_kwargs) & RESERVED_TEMPLATE_VARIABLES)
        if reserved:
            raise ValueError(f"chat template variables cannot set {', '.join(reserved)}")


@dataclass
class Tokenizer:
    backend: HFTokenizer
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    eos_token_ids: tuple[int, ...] = ()
    special_ids: frozenset[int] = field(default_factory=frozenset)
    template_tokens: dict = field(default_factory=dict)  # special token texts the template may use

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        """From an HF folder, or from a .gguf file's metadata."""
        if is_gguf_path(model_dir):
            return cls.from_gguf(model_dir)
        model_dir = Path(model_dir)
        if not (model_dir / "tokenizer.json").is_file():
            raise ModelFormatError(f"{model_dir}: no tokenizer.json (a model is an HF folder or a .gguf file)")
        backend = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        cfg = _read_json(model_dir / "tokenizer_config.json")
        _apply_added_tokens(backend, cfg.get("added_tokens_decoder") or {})
        eos = _token_text(cfg.get("eos_token"))
        return cls._build(backend, _chat_template(model_dir, cfg), cfg, _eos_ids(model_dir, backend, eos))

    @classmethod
    def from_gguf(cls, path: str | Path) -> "Tokenizer":
        from splitserve.engine.gguf_tokenizer import build_tokenizer, eos_token_ids, tokenizer_config

        gguf = open_gguf(path)
        cfg = tokenizer_config(gguf)
        return cls._build(build_tokenizer(gguf), cfg["chat_template"], cfg, tuple(eos_token_ids(gguf)))

    @classmethod
    def _build(cls, backend: HFTokenizer, template: str | None, cfg: dict, eos_ids: tuple[int, ...]) -> "Tokenizer":
        texts = {name: _token_text(cfg.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
        specials = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
        return cls(backend, template, texts["bos_token"], texts["eos_token"], eos_ids, specials,
                   {k: v for k, v in texts.items() if v is not None})

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_format: ChatFormat | None = None) -> str:
        """The prompt text; `chat_format` (when given) says all of how, `add_generation_prompt` included."""
        if not self.chat_template:
            raise ValueError("this model has no chat template (chat_template.jinja, chat_template.json or "
                             "tokenizer_config.json: chat_template)")
        fmt = chat_format or ChatFormat(add_generation_prompt)
        variables = {**fmt.template_kwargs, "bos_token": self.bos_token or "", "eos_token": self.eos_token or "",
                     **self.template_tokens}
        text = _compiled_template(self.chat_template).render(
            messages=messages, add_generation_prompt=fmt.add_generation_prompt, **variables)
        return _cut_after_final_message(text, messages) if fmt.continue_final_message else text

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    chat_format: ChatFormat | None = None, add_special_tokens: bool = False) -> list[int]:
        """Chat prompt ids; special tokens come from the template itself (as HF does), unless asked for too."""
        text = self.apply_chat_template(messages, add_generation_prompt, chat_format)
        return self.encode(text, add_special_tokens=add_special_tokens)


def _cut_after_final_message(text: str, messages: list[dict]) -> str:
    """The rendered chat up to the end of its final message's content (what follows it, the template's end of
    turn, is dropped), as transformers cuts it: at the message as written, or without the whitespace around
    it when the template trimmed that."""
    final = messages[-1].get("content") if messages else None
    if not isinstance(final, str):
        raise ValueError("continue_final_message needs a final message with text content")
    at = text.rfind(final.strip())
    if at < 0:
        raise ValueError("continue_final_message: the chat template does not render the final message as sent")
    whole = text[at:at + len(final)] == final
    return text[:at + len(final if whole else final.strip())]


def _raise_template_error(message: str):
    raise ValueError(f"chat template: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def _compiled_template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _chat_template(model_dir: Path, cfg: dict) -> str | None:
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = _read_json(model_dir / "chat_template.json").get("chat_template") or cfg.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default")
    return template


def _apply_added_tokens(backend: HFTokenizer, decoder: dict) -> None:
    """tokenizer_config.json's `added_tokens_decoder` wins over tokenizer.json, as in transformers."""
    current = backend.get_added_tokens_decoder()
    for token_id, spec in sorted(decoder.items(), key=lambda item: int(item[0])):
        known = current.get(int(token_id))
        if known is not None and known.content == spec["content"] and known.special == spec.get("special", False):
            continue
        token = AddedToken(spec["content"], single_word=spec.get("single_word", False), lstrip=spec.get("lstrip", False),
                           rstrip=spec.get("rstrip", False), normalized=spec.get("normalized", False),
                           special=spec.get("special", False))
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _eos_ids(model_dir: Path, backend: HFTokenizer, eos: str | None) -> tuple[int, ...]:
    ids = _read_json(model_dir / "generation_config.json").get("eos_token_id")
    if ids is None:
        ids = _read_json(model_dir / "config.json").get("eos_token_id")
    if ids is None and eos is not None:
        ids = backend.token_to_id(eos)
    if ids is None:
        return ()
    return tuple(ids) if isinstance(ids, list) else (int(ids),)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never splitting a UTF-8 character.

    Decodes a sliding window (prefix offset .. end) and emits only text past what the window
    already produced; a trailing U+FFFD means an incomplete byte sequence, so it waits.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None, skip_special_tokens: bool = True):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.ids: list[int] = list(prompt_ids or [])[-6:]
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def add(self, token_ids: list[int]) -> str:
        self.ids.extend(token_ids)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        delta = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

    def flush(self) -> str:
        """Text still held back at the end of the stream (an incomplete character decodes as U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)
