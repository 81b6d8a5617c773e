"""vLLM's per-request token limits on what is sampled: `allowed_token_ids` (only these) and `bad_words`
(token sequences the output never completes).

A bad word is tokenized as vLLM does (its `SamplingParams.update_from_tokenizer`): as written, without its
leading spaces, and again after one space where that spelling starts with another token, so a word is banned
at the start of the text and in its middle. vLLM takes the spelled-with-a-space sequence only when it is as
many tokens as the word alone, which lets a word through mid-text whenever the two differ in length (SmolLM2's
"Rhine" is two tokens and " Rhine" one); here it is taken whenever it differs. A sequence's last token is
banned while the output ends with the tokens before it; only output tokens count, not the prompt (as in vLLM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

import torch

from splitserve.engine.grammar import allowed_tokens


def bad_word_token_ids(tokenizer, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Each word's token sequences (the module's docstring); ValueError for a word that has no tokens."""
    sequences: list[tuple[int, ...]] = []
    for word in words:
        plain = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        if not plain:
            raise ValueError(f"bad word {word!r} has no tokens")
        sequences.append(plain)
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        if spaced and spaced[0] != plain[0]:
            sequences.append(spaced)
    return tuple(sequences)


def with_bad_word_ids(params, tokenizer):
    """`params` with its bad words as token sequences (after any it carries already) and no words left, so
    they are tokenized once, by whoever has the text (the router's front, or an in-process engine)."""
    if not params.bad_words:
        return params
    return replace(params, bad_words=(), bad_word_ids=params.bad_word_ids + bad_word_token_ids(tokenizer, params.bad_words))


def bad_word_bans(sequences: Sequence[Sequence[int]], output: Sequence[int]) -> list[int]:
    """The tokens that would complete one of `sequences` after `output` (the tokens generated so far)."""
    banned = []
    for ids in sequences:
        prefix = len(ids) - 1
        if prefix <= len(output) and list(output[len(output) - prefix:]) == list(ids[:prefix]):
            banned.append(ids[-1])
    return banned


def banned_tokens(params, num_output_tokens: int, eos_token_ids: Sequence[int], output: Sequence[int]) -> tuple[int, ...]:
    """What the next token may not be: EOS and the stop tokens before min_tokens, and any token that would
    complete a bad word after `output` (the output so far, as penalties see it)."""
    banned = ()
    if num_output_tokens < params.min_tokens and not params.ignore_eos:
        banned = tuple(eos_token_ids) + params.stop_token_ids
    if params.bad_word_ids:
        banned += tuple(bad_word_bans(params.bad_word_ids, output))
    return banned


def next_token_mask(params, matcher, vocab_size: int, device) -> torch.Tensor | None:
    """bool [vocab_size]: what the grammar's matcher and allowed_token_ids take next (None: everything)."""
    grammar = None if matcher is None else allowed_tokens(matcher, vocab_size, device)
    ids = params.allowed_token_ids
    return combined_mask(grammar, allowed_mask(ids, vocab_size, str(device)) if ids else None)


@lru_cache(maxsize=64)
def allowed_mask(token_ids: tuple[int, ...], vocab_size: int, device: str) -> torch.Tensor:
    """bool [vocab_size]: True for `token_ids` (read only: shared by every request that names the same)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[[t for t in token_ids if t < vocab_size]] = True
    return mask


def combined_mask(grammar: torch.Tensor | None, allowed: torch.Tensor | None) -> torch.Tensor | None:
    """The tokens both take; where they share none, the grammar's alone (its output must stay valid)."""
    if grammar is None or allowed is None:
        return allowed if grammar is None else grammar
    both = grammar & allowed
    return both if both.any() else grammar
