"""vLLM's beam search (`use_beam_search` on chat and completions, `n` the beam width), run by the router
over the cluster as vLLM's server runs it over its engine.

Each step asks, for every live beam, the next token's top 2 x width log-probabilities: a one-token request
whose prompt is the prompt and the beam's tokens (the nodes' prefix cache keeps what the beams share). Every
beam grows by each of those tokens; a child ending in EOS is finished (unless ignore_eos), the others compete,
and the width best live on. Best means vLLM's score: the cumulative log-probability over length **
length_penalty, the length counting the prompt and not a final EOS. After max_tokens steps (or when no beam
is live) the answer is the width best of the finished and live beams, best first; their text leaves out EOS.
With no EOS in play this is exact width-k beam search, as HF transformers' `generate(num_beams=k)` runs it.
"""

from __future__ import annotations

import math

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from splitserve.engine import SamplingParams
from splitserve.engine.sampling import MAX_TOP_LOGPROBS
from router.cluster.jobs import Done
from router.front.completion import Finish, Piece

MAX_BEAM_WIDTH = MAX_TOP_LOGPROBS // 2  # a step asks for 2 x width top log-probabilities
# the next token's top (token id, logprob) pairs after each prompt
Step = Callable[[list[list[int]]], Awaitable[list[list[tuple[int, float]]]]]


@dataclass(frozen=True)
class Beam:
    token_ids: tuple[int, ...]  # generated so far
    cum_logprob: float
    ended: bool = False  # its last token is EOS

    def score(self, prompt_len: int, length_penalty: float) -> float:
        """Orders beams as vLLM's score, cum_logprob / length ** length_penalty, does: its log-magnitude, negated
        (no overflow whatever the penalty; a sure beam, cum_logprob 0, is best)."""
        if self.cum_logprob == 0:
            return math.inf
        length = prompt_len + len(self.token_ids) - self.ended
        return length_penalty * math.log(length) - math.log(-self.cum_logprob)


async def beam_search(step: Step, prompt: Sequence[int], width: int, max_tokens: int, eos_token_ids: Sequence[int],
                      ignore_eos: bool = False, length_penalty: float = 1.0) -> list[Beam]:
    """The `width` best beams after `prompt`, best first."""
    def best(beams: list[Beam]) -> list[Beam]:
        return sorted(beams, key=lambda b: b.score(len(prompt), length_penalty), reverse=True)[:width]

    live, ended = [Beam((), 0.0)], []
    for _ in range(max_tokens):
        grown = []
        for beam, top in zip(live, await step([list(prompt) + list(b.token_ids) for b in live])):
            for token_id, logprob in top:
                child = Beam(beam.token_ids + (token_id,), beam.cum_logprob + logprob,
                             token_id in eos_token_ids and not ignore_eos)
                (ended if child.ended else grown).append(child)
        live = best(grown)
        if not live:
            break
    return best(ended + live)


def step_params(params: SamplingParams, width: int) -> SamplingParams:
    """A step's one-token request: the top 2 x width log-probabilities of the model's own distribution."""
    return replace(params, max_tokens=1, temperature=0.0, logprobs=2 * width, ignore_eos=True, min_tokens=0)


def top_logprobs(pieces: list[Piece]) -> list[tuple[int, float]]:
    """A step's answer: its one token's top (token id, logprob) pairs; RuntimeError if it came without one (a
    StopIteration would end the search's coroutine in a confusing way)."""
    top = next((list(entry[1]) for piece in pieces for entry in piece.logprobs if entry is not None), None)
    if top is None:
        raise RuntimeError("a beam search step ended without a token")
    return top


def beam_results(beams: list[Beam], tokenizer, e2e_s: float) -> list[tuple[list[Piece], Finish]]:
    """Each beam as a choice's pieces and finish (openai_format.whole_response): "stop" if it ended in EOS."""
    results = []
    for beam in beams:
        shown = list(beam.token_ids[:-1] if beam.ended else beam.token_ids)
        reason = "stop" if beam.ended else "length"
        results.append(([Piece(shown, tokenizer.decode(shown))],
                        Finish(reason, len(beam.token_ids), Done(reason, 0, None), 0.0, e2e_s)))
    return results
