"""Sampling-penalty, logit-bias, bad-word, allowed-token, LoRA and JSON-schema flags shared by `splitserve generate` (in-process) and `splitserve complete` (a router)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-p", type=float, default=0.0,
                        help="HF's / vLLM's: drop tokens less likely than MIN_P x the likeliest (0: off)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="HF's / vLLM's, on prompt and output tokens (1: off; > 1 discourages repeats)")
    parser.add_argument("--frequency-penalty", type=float, default=0.0,
                        help="OpenAI's: minus this times a token's count in the output so far")
    parser.add_argument("--presence-penalty", type=float, default=0.0,
                        help="OpenAI's: minus this for every token already in the output")
    parser.add_argument("--logit-bias", type=_bias, action="append", default=[], metavar="TOKEN_ID=BIAS",
                        help="OpenAI's: add BIAS (-100 to 100) to a token's logit; repeat for more tokens")
    parser.add_argument("--bad-word", dest="bad_words", action="append", default=[], metavar="WORD",
                        help="vLLM's bad_words: the output never contains WORD (as a word or inside one); repeat for more")
    parser.add_argument("--allowed-token-ids", type=_ids, default=(), metavar="ID,ID,...",
                        help="vLLM's allowed_token_ids: only these tokens are sampled")
    parser.add_argument("--cache-salt", default=None, metavar="SALT",
                        help="vLLM's cache_salt: the prompt shares cached KV only with requests of the same salt")
    parser.add_argument("--lora", default=None, metavar="NAME",
                        help="run the LoRA adapter of this name (one of the nodes' --lora-modules; generate's own)")
    parser.add_argument("--json-schema", type=_schema, default=None, metavar="SCHEMA",
                        help="constrain the answer to this JSON schema (inline JSON, or @file); {} for any JSON object")


def _schema(text: str) -> dict:
    try:
        schema = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not a JSON schema: {exc}") from None
    if not isinstance(schema, dict):
        raise argparse.ArgumentTypeError("a JSON schema is a JSON object")
    return schema


def _bias(text: str) -> tuple[int, float]:
    token_id, sep, bias = text.partition("=")
    try:
        if not sep:
            raise ValueError(text)
        return int(token_id), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID=BIAS, got {text!r}") from None


def _ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids separated by commas, got {text!r}") from None


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """SamplingParams keywords from the flags above."""
    from splitserve.engine.grammar import json_schema_grammar

    grammar = None if args.json_schema is None else json_schema_grammar(args.json_schema or None)
    return dict(min_p=args.min_p, repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
                presence_penalty=args.presence_penalty, logit_bias=dict(args.logit_bias), grammar=grammar,
                bad_words=tuple(args.bad_words), allowed_token_ids=args.allowed_token_ids, cache_salt=args.cache_salt,
                lora=args.lora)
