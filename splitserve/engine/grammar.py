"""Structured output: a request's grammar restricts each sampled token to those that keep its output a
valid prefix of the language (OpenAI's `response_format` json_object / json_schema; any grammar
llguidance takes: JSON schema, Lark, regex).

`SamplingParams.grammar` holds llguidance's grammar text (what `LLMatcher.grammar_from_json_schema`
and friends return); `Grammars` (one per tokenizer) checks it and makes the matcher a request
carries. Each step the matcher's mask sends every other token's logit to -inf before sampling (so
greedy, seeded sampling and logprobs all see the masked distribution); the sampled token is fed
back; a matcher that has completed its language ends the request ("stop"). A request that
continues elsewhere (the decode node after the prefill node's first token, a failover
continuation) replays the output tokens it already has into a fresh matcher.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch

from splitserve.engine.tokenizer import Tokenizer

MAX_GRAMMAR_CHARS = 256 << 10
KEEP_CHECKED = 64  # grammars known valid: a node checks each request's at the door and again at admission,
                   # the router once per prompt, and clients send the same schema again and again


class Grammars:
    """Matchers for one tokenizer; its llguidance tokenizer is built on first use (0.23 s for SmolLM2's
    49k tokens), or by `warm`."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        # a set (add, clear and `in` are single steps under the GIL): a node's asyncio thread and its engine
        # thread both check
        self._checked: set[str] = set()

    @functools.cached_property
    def _lltokenizer(self):
        import llguidance

        return llguidance.LLTokenizer(self.tokenizer.backend.to_str(), n_vocab=self.vocab_size,
                                      eos_token=list(self.tokenizer.eos_token_ids) or None)

    def warm(self) -> None:
        """Build the llguidance tokenizer now (a server at startup: else its first request with a grammar,
        or with tools, waits for it)."""
        self._lltokenizer

    def check(self, grammar: str) -> None:
        """ValueError naming what is wrong with the grammar (changes nothing; ~0.5 ms for a JSON schema the first
        time, a lookup while it is among the KEEP_CHECKED valid ones kept; all are forgotten when that fills)."""
        if grammar in self._checked:
            return
        self.matcher(grammar)
        if len(self._checked) >= KEEP_CHECKED:
            self._checked.clear()
        self._checked.add(grammar)

    def matcher(self, grammar: str, output_token_ids=()):
        """A matcher for `grammar` that has consumed the output so far; ValueError if either is invalid."""
        import llguidance

        if len(grammar) > MAX_GRAMMAR_CHARS:
            raise ValueError(f"the grammar has {len(grammar)} characters, more than {MAX_GRAMMAR_CHARS}")
        matcher = llguidance.LLMatcher(self._lltokenizer, grammar)
        if matcher.is_error():
            raise ValueError(f"invalid grammar: {matcher.get_error()}")
        if output_token_ids and not matcher.consume_tokens(list(output_token_ids)):
            raise ValueError(f"the output so far does not fit the grammar: {matcher.get_error()}")
        return matcher


def allowed_tokens(matcher, vocab_size: int, device) -> torch.Tensor:
    """bool [vocab_size]: the tokens the matcher takes next."""
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    return torch.from_numpy(bits[:vocab_size].astype(bool)).to(device)


def json_schema_grammar(schema: dict | None) -> str:
    """llguidance's grammar for JSON values of `schema` (None: any JSON object, OpenAI's json_object)."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(json.dumps({"type": "object"} if schema is None else schema))


def regex_grammar(regex: str) -> str:
    """llguidance's grammar for texts matching `regex` whole (Rust regex syntax)."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_regex(regex)


def choice_grammar(choices: list[str]) -> str:
    """The language of exactly these texts: each a regex of its letters and digits as they are and every
    other character by its code point (nothing in a choice is read as regex syntax)."""
    literal = ("".join(c if c.isalnum() else f"\\x{{{ord(c):X}}}" for c in text) for text in choices)
    return regex_grammar("|".join(f"({text})" for text in literal))


def lark_grammar(lark: str) -> str:
    """llguidance's grammar for a Lark grammar (llguidance's dialect: JSON schemas and regexes may be embedded)."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(lark)
