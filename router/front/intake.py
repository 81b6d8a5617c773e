"""Turns a client's request into a Job: prompt formats, validation, limits.

Shared by the gRPC and (later) HTTP fronts; raises ValueError with a message for the client.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, replace

from splitserve.chunkcache.documents import chat_document_prompt, document_prompt
from splitserve.engine import ModelConfig, SamplingParams, Tokenizer
from splitserve.engine.tokenizer import ChatFormat
from splitserve.engine import generation_defaults
from splitserve.engine.grammar import Grammars
from splitserve.engine.pooling import Pooling, PoolingParams
from splitserve.engine.sampling import check_prompt
from splitserve.engine.token_limits import with_bad_word_ids
from router.cluster.orchestrator import Job

MAX_DOCUMENTS = 64
MAX_STOP_STRINGS = 16
MAX_REQUEST_ID_CHARS = 128  # room for the ".retryN" suffix of re-dispatches within the nodes' 256


@dataclass(frozen=True)
class Limits:
    max_model_len: int
    vocab_size: int
    max_documents: int = MAX_DOCUMENTS
    hidden_size: int = 0  # the length of an embedding (0: unknown)


def check_truncate(truncate: int | None, documents=()) -> None:
    """ValueError unless vLLM's truncate_prompt_tokens is None, -1 (the context length) or >= 1, and comes
    without documents (it would cut into them)."""
    if truncate is None:
        return
    if truncate != -1 and truncate < 1:
        raise ValueError(f"truncate_prompt_tokens must be -1 or >= 1, got {truncate}")
    if documents:
        raise ValueError("truncate_prompt_tokens does not go with documents (it would cut into them)")


def caller_salt(caller: str, salt: str | None) -> str:
    """The cache salt of a request from `caller` that asked for `salt` (or none): one per caller and salt, which
    no other caller can name (the caller is its key's digest, known to the router only)."""
    return hashlib.sha256(f"{caller}\0{salt or ''}".encode()).hexdigest()


class Frontend:
    def __init__(self, tokenizer: Tokenizer, limits: Limits, sampling_defaults: dict | None = None,
                 embedding_pooling: str = Pooling.LAST.value):
        """`sampling_defaults`: what the OpenAI API uses for sampling settings a request leaves out
        (generation_defaults.py: the model's recommended ones, or none); `embedding_pooling`: how an
        embedding request that names none pools (splitserve/engine/pooling.py)."""
        self.tokenizer = tokenizer
        self.limits = limits
        self.grammars = Grammars(tokenizer, limits.vocab_size)
        self.sampling_defaults = dict(sampling_defaults or {})
        self.embedding_pooling = PoolingParams(embedding_pooling).kind.value
        self.salt_per_caller = False  # --cache-salt-per-key

    @classmethod
    def from_model_dir(cls, model_dir, generation_config: str = "none",
                       embedding_pooling: str = Pooling.LAST.value) -> "Frontend":
        """`generation_config`: "auto" takes the model's recommended sampling defaults, "none" OpenAI's."""
        cfg = ModelConfig.from_dir(model_dir)
        defaults = generation_defaults.sampling_defaults(model_dir) if generation_config == "auto" else {}
        limits = Limits(cfg.max_position_embeddings, cfg.vocab_size, hidden_size=cfg.hidden_size)
        return cls(Tokenizer.from_dir(model_dir), limits, defaults, embedding_pooling)

    def prompt_ids(self, prompt: str | None = None, token_ids: list[int] | None = None,
                   messages: list[dict] | None = None, documents: list[str] = ()) -> list[int]:
        return self.prompt_and_chunks(prompt, token_ids, messages, documents)[0]

    def prompt_and_chunks(self, prompt: str | None = None, token_ids: list[int] | None = None,
                          messages: list[dict] | None = None, documents: list[str] = (),
                          chat_format: ChatFormat | None = None, truncate: int | None = None,
                          add_special_tokens: bool | None = None) -> tuple[list[int], tuple]:
        """Prompt ids and the (start, length) span of each document in them. Documents go with a text
        prompt (before it) or chat messages (at the start of the last user message, inside the chat
        template, rendered as `chat_format` says); each is tokenized alone (documents.py), so its KV can
        come from the chunk cache. `truncate` keeps the prompt's last that many tokens (vLLM's
        truncate_prompt_tokens; -1: the context length); not with documents. `add_special_tokens` (vLLM's):
        whether the tokenizer adds its special tokens (e.g. BOS) to a text prompt (default: yes) or to the
        rendered chat (default: no, the template has its own); prompt token ids are taken as they are."""
        if truncate is None:
            return self._prompt_and_chunks(prompt, token_ids, messages, documents, chat_format, add_special_tokens)
        check_truncate(truncate, documents)
        ids, _ = self._prompt_and_chunks(prompt, token_ids, messages, (), chat_format, add_special_tokens)
        return ids[-(self.limits.max_model_len if truncate == -1 else truncate):], ()

    def _prompt_and_chunks(self, prompt, token_ids, messages, documents, chat_format,
                           add_special_tokens: bool | None = None) -> tuple[list[int], tuple]:
        if len(documents) > self.limits.max_documents:
            raise ValueError(f"at most {self.limits.max_documents} documents per request, got {len(documents)}")
        if documents and token_ids is not None:
            raise ValueError("documents go with a text prompt or chat messages, not with prompt token ids")
        if any(not d for d in documents):
            raise ValueError("documents must be non-empty strings")
        if messages is not None:
            if not documents:
                return self.tokenizer.encode_chat(messages, chat_format=chat_format,
                                                  add_special_tokens=bool(add_special_tokens)), ()
            if add_special_tokens:
                raise ValueError("add_special_tokens does not go with documents in a chat request")
            ids, spans = chat_document_prompt(self.tokenizer, messages, list(documents), chat_format)
            return ids, tuple(spans)
        if token_ids is not None:
            return list(token_ids), ()
        if prompt is None:
            raise ValueError("one of prompt, prompt_token_ids or messages is required")
        special = add_special_tokens is not False
        if documents:
            ids, spans = document_prompt(self.tokenizer, list(documents), prompt, special)
            return ids, tuple(spans)
        return (self.tokenizer.encode(prompt, add_special_tokens=special) if prompt else []), ()

    def embedding_input(self, prompt: str | None = None, token_ids: list[int] | None = None,
                        truncate: int | None = None, head: int | None = None,
                        add_special_tokens: bool = True) -> list[int]:
        """An embedding input's ids (a text encoded as a completions prompt is); `truncate` keeps the last that
        many (vLLM's truncate_prompt_tokens; -1: the context length), `head` the first that many. ValueError if
        it is empty or too long."""
        ids = self.prompt_and_chunks(prompt, token_ids, truncate=truncate, add_special_tokens=add_special_tokens)[0]
        if head is not None:
            ids = ids[:head]
        check_prompt(ids, self.limits.vocab_size)
        if len(ids) > self.limits.max_model_len:
            raise ValueError(f"input ({len(ids)} tokens) exceeds the context length {self.limits.max_model_len}")
        return ids

    def salt_for(self, caller: str, salt: str | None) -> str | None:
        """The cache salt a request of `caller` that asked for `salt` runs under: with `salt_per_caller` its
        caller's own (caller_salt), else the one it asked for."""
        return caller_salt(caller, salt) if self.salt_per_caller else salt

    def job(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "", chunks: tuple = (),
            caller: str = "") -> Job:
        """`caller`: who sent it (auth.ApiKeys.caller); with `salt_per_caller` its prompt shares cached KV only
        with the same caller's."""
        params = replace(with_bad_word_ids(params, self.tokenizer), cache_salt=self.salt_for(caller, params.cache_salt))
        self.validate(prompt_ids, params)
        if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
            raise ValueError(f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable characters")
        return Job(request_id or f"cmpl-{uuid.uuid4().hex}", prompt_ids, params, chunks=tuple(chunks))

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        check_prompt(prompt_ids, self.limits.vocab_size)
        params.check_vocab(self.limits.vocab_size)
        if params.grammar is not None:
            self.grammars.check(params.grammar)
        total = len(prompt_ids) + params.max_tokens
        if total > self.limits.max_model_len:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) = {total} "
                             f"exceeds the context length {self.limits.max_model_len}")
        if len(params.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(params.stop)}")
