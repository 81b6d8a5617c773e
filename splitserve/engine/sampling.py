"""Sampling parameters of a request, validated at the door."""

from __future__ import annotations

import math
from dataclasses import dataclass

from splitserve.engine.lora_names import check_lora_name

MAX_TOP_LOGPROBS = 20
UINT32_END = 2**32  # counts travel as uint32 between router and nodes
MAX_REPETITION_PENALTY = 10.0
MAX_LOGIT_BIAS_TOKENS = 1024
MAX_ABS_LOGIT_BIAS = 100.0  # OpenAI's range: -100 bans a token, +100 all but forces it
MAX_SALT_CHARS = 256
MAX_BAD_WORDS = 128  # vLLM's bad_words (its limit): token sequences the output never contains
MAX_BAD_WORD_TOKENS = 2048  # over all of a request's sequences (a word is spelled twice: vLLM's 1,024 x 2)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0  # HF's / vLLM's: tokens less likely than min_p x the likeliest are dropped; 0: off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False  # vLLM's: the text ends after the stop string, not before it
    skip_special_tokens: bool = True  # vLLM's: False shows special tokens (EOS, chat markers) in the text
    ignore_eos: bool = False
    logprobs: int | None = None  # top-k logprobs per sampled token; None: off
    prompt_logprobs: int | None = None  # logprob and top-k of each prompt token after the first; None: off
    min_tokens: int = 0
    presence_penalty: float = 0.0  # OpenAI's, on output tokens: logit - presence * (count > 0) - frequency * count
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # HF's / vLLM's, on prompt and output tokens: logit / p if > 0 else logit * p
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit), ascending ids
    grammar: str | None = None  # llguidance grammar the output must match (grammar.py); None: free text
    priority: int = 0  # vLLM's: lower runs sooner, and a waiting request preempts running ones of higher value
    allowed_token_ids: tuple[int, ...] = ()  # vLLM's: only these are sampled (sorted, unique); empty: all
    bad_words: tuple[str, ...] = ()  # vLLM's, as text: the router's reading; it sends them as bad_word_ids
    bad_word_ids: tuple[tuple[int, ...], ...] = ()  # token sequences never completed in the output (sampler.py)
    cache_salt: str | None = None  # vLLM's: its prompt shares cached KV only with requests of the same salt
    lora: str | None = None  # the LoRA adapter it runs (lora.py; the OpenAI API's model names one); None: the base

    def __post_init__(self):
        _check(isinstance(self.max_tokens, int) and 1 <= self.max_tokens < UINT32_END,
               f"max_tokens must be in [1, 2**32), got {self.max_tokens}")
        _check(0 <= self.temperature < math.inf, f"temperature must be >= 0 and finite, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _check(0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}")
        _check(0 <= self.top_k < UINT32_END, f"top_k must be in [0, 2**32) (0 disables it), got {self.top_k}")
        _check(0 <= self.min_tokens < UINT32_END, f"min_tokens must be in [0, 2**32), got {self.min_tokens}")
        _check(self.seed is None or 0 <= self.seed < 2**63, f"seed must be in [0, 2**63), got {self.seed}")
        _check(self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
               f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}")
        _check(self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS,
               f"prompt_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.prompt_logprobs}")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        for name in ("presence_penalty", "frequency_penalty"):
            _check(-2 <= getattr(self, name) <= 2, f"{name} must be in [-2, 2], got {getattr(self, name)}")
        _check(0 < self.repetition_penalty <= MAX_REPETITION_PENALTY,
               f"repetition_penalty must be in (0, {MAX_REPETITION_PENALTY:g}], got {self.repetition_penalty}")
        check_priority(self.priority)
        _check(self.grammar is None or (isinstance(self.grammar, str) and self.grammar),
               "grammar must be a non-empty string (llguidance's grammar text)")
        object.__setattr__(self, "logit_bias", _checked_bias(self.logit_bias))
        object.__setattr__(self, "allowed_token_ids", tuple(sorted(set(self.allowed_token_ids))))
        object.__setattr__(self, "bad_words", tuple(self.bad_words))
        object.__setattr__(self, "bad_word_ids", tuple(tuple(ids) for ids in self.bad_word_ids))
        _check_bad_words(self.bad_words, self.bad_word_ids)
        check_cache_salt(self.cache_salt)
        if self.lora is not None:
            check_lora_name(self.lora)
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def kv_namespace(self) -> str | None:
        return kv_namespace(self.cache_salt, self.lora)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def check_vocab(self, vocab_size: int) -> None:
        """ValueError unless every token id named (stop, logit_bias, allowed, bad words) is in the vocabulary."""
        check_token_ids("stop token ids", self.stop_token_ids, vocab_size)
        check_token_ids("logit_bias token ids", [token_id for token_id, _ in self.logit_bias], vocab_size)
        check_token_ids("allowed_token_ids", self.allowed_token_ids, vocab_size)
        check_token_ids("bad word token ids", [t for ids in self.bad_word_ids for t in ids], vocab_size)

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


def check_token_ids(what: str, ids, vocab_size: int) -> None:
    """ValueError naming `what` unless every id is an int in [0, vocab_size)."""
    bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab_size]
    _check(not bad, f"{what} must be in [0, {vocab_size}) (the vocabulary size); got {bad[:5]}")


def check_prompt(prompt_token_ids, vocab_size: int) -> None:
    """ValueError for an empty prompt or a token id outside the vocabulary."""
    _check(bool(prompt_token_ids), "prompt is empty: at least 1 token is required")
    check_token_ids("prompt token ids", prompt_token_ids, vocab_size)


def _checked_bias(pairs) -> tuple[tuple[int, float], ...]:
    """A dict or (token id, bias) pairs, as pairs sorted by id; ValueError for a repeated id or a value out of
    range. Ids are checked against the vocabulary where it is known (the engine, the router's front)."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    pairs = tuple(sorted((int(token_id), float(bias)) for token_id, bias in items))
    _check(len(pairs) <= MAX_LOGIT_BIAS_TOKENS, f"logit_bias holds at most {MAX_LOGIT_BIAS_TOKENS} tokens, "
                                                f"got {len(pairs)}")
    _check(len({token_id for token_id, _ in pairs}) == len(pairs), "logit_bias names a token twice")
    for token_id, bias in pairs:
        _check(0 <= token_id < UINT32_END, f"logit_bias token ids must be in [0, 2**32), got {token_id}")
        _check(-MAX_ABS_LOGIT_BIAS <= bias <= MAX_ABS_LOGIT_BIAS,
               f"logit_bias values must be in [-100, 100], got {bias} for token {token_id}")
    return pairs


def _check_bad_words(words: tuple[str, ...], sequences: tuple[tuple[int, ...], ...]) -> None:
    _check(all(isinstance(w, str) and w.strip() for w in words), "bad_words must be non-empty strings")
    _check(len(words) <= MAX_BAD_WORDS, f"at most {MAX_BAD_WORDS} bad_words, got {len(words)}")
    _check(len(sequences) <= 2 * MAX_BAD_WORDS,
           f"at most {2 * MAX_BAD_WORDS} bad word token sequences, got {len(sequences)}")
    _check(all(ids for ids in sequences), "a bad word token sequence is empty")
    _check(sum(map(len, sequences)) <= MAX_BAD_WORD_TOKENS,
           f"bad words take at most {MAX_BAD_WORD_TOKENS} tokens in all, got {sum(map(len, sequences))}")


def kv_namespace(cache_salt: str | None, lora: str | None) -> str | None:
    """What a prompt's cached KV is shared under: its cache salt, and its LoRA adapter (an adapter's KV is its own).
    None: shared with every request of neither."""
    if lora is None:
        return cache_salt
    return f"{cache_salt or ''}\x1flora:{lora}"  # a salt is printable: no plain salt reads the same


def check_cache_salt(salt) -> None:
    """vLLM's cache_salt: None, or a non-empty printable string of at most MAX_SALT_CHARS characters."""
    _check(salt is None or (isinstance(salt, str) and 0 < len(salt) <= MAX_SALT_CHARS and salt.isprintable()),
           f"cache_salt must be a non-empty printable string of at most {MAX_SALT_CHARS} characters")


def check_priority(priority) -> None:
    """vLLM's request priority (lower runs sooner): an integer that fits the API's int32."""
    _check(isinstance(priority, int) and not isinstance(priority, bool) and -2**31 <= priority < 2**31,
           f"priority must be an integer in [-2**31, 2**31), got {priority!r}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
