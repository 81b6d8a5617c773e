"""Sampling-penalty flags shared by `splitserve generate` (in-process) and `splitserve complete` (a router)."""

from __future__ import annotations

import argparse


def add_penalty_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="HF's / vLLM's, on prompt and output tokens (1: off; > 1 discourages repeats)")
    parser.add_argument("--frequency-penalty", type=float, default=0.0,
                        help="OpenAI's: minus this times a token's count in the output so far")
    parser.add_argument("--presence-penalty", type=float, default=0.0,
                        help="OpenAI's: minus this for every token already in the output")


def penalties(args: argparse.Namespace) -> dict:
    """SamplingParams keywords from the flags above."""
    return dict(repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
                presence_penalty=args.presence_penalty)
