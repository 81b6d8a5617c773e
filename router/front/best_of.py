"""OpenAI's `best_of` on completions: best_of samples of each prompt are generated, and the n of them with the
highest log-probability per token are its choices, best first (OpenAI's rule; usage counts every sample's
tokens, as OpenAI bills them). The samples' token logprobs are asked for whatever the request asks; the
response shows them only if it asked."""

from __future__ import annotations

import math

from router.front.completion import Finish, Piece

Result = tuple[list[Piece], Finish]


def mean_logprob(pieces: list[Piece]) -> float:
    """The sample's log-probability per generated token (-inf for one without any)."""
    logprobs = [entry[0] for piece in pieces for entry in piece.logprobs if entry is not None]
    return sum(logprobs) / len(logprobs) if logprobs else -math.inf


def best_results(results: list[Result], best_of: int, n: int) -> list[Result]:
    """Of each prompt's `best_of` consecutive results, its n best, best first."""
    chosen = []
    for start in range(0, len(results), best_of):
        samples = results[start:start + best_of]
        chosen += sorted(samples, key=lambda result: mean_logprob(result[0]), reverse=True)[:n]
    return chosen
