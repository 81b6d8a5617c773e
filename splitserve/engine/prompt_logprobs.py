"""Logprobs of a prompt's own tokens: vLLM's `prompt_logprobs`, OpenAI's `echo` with `logprobs`.

A request that asks for them has the logits of every prompt row computed (not only the last
row's), chunk by chunk as its prefill runs: the row of position q gives the logprob of prompt
token q + 1 and the top-k there. They are the model's own logprobs (no bias, penalty or
temperature), the numbers a perplexity or a multiple-choice score is computed from. Its prompt
is never taken from the prefix cache: a cached block has no logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitserve.engine.request import Request

ROWS_PER_SLICE = 256  # log_softmax over [rows, vocab] a slice at a time: bounded temporaries


@dataclass
class PromptRows:
    """One scheduled prompt chunk's rows whose logits score prompt tokens: positions [start, end)
    score tokens start + 1 .. end; `first` is the first one's index among the step's logit rows."""

    request: Request
    start: int
    end: int
    first: int
    completes_prompt: bool

    @property
    def num_rows(self) -> int:
        return self.end - self.start


def prompt_rows(request: Request, start: int, num_new_tokens: int, first: int) -> PromptRows | None:
    """The rows of a chunk [start, start + num_new_tokens) that score prompt tokens; None if the request
    wants no prompt logprobs or has them all."""
    num_prompt = request.num_prompt_tokens
    if not request.wants_prompt_logprobs or request.prompt_logprobs_done or start >= num_prompt:
        return None
    end = min(start + num_new_tokens, num_prompt - 1)
    return PromptRows(request, start, max(start, end), first, start + num_new_tokens >= num_prompt)


def record(rows: PromptRows, logits: torch.Tensor) -> None:
    """Fill the request's entries for these rows from the step's logits [rows, vocab]."""
    req, k = rows.request, rows.request.params.prompt_logprobs
    if not req.prompt_logprobs:
        req.prompt_logprobs = [None] * req.num_prompt_tokens
    targets = torch.tensor(req.prompt_token_ids[rows.start + 1: rows.end + 1], dtype=torch.long, device=logits.device)
    for lo in range(0, rows.num_rows, ROWS_PER_SLICE):
        hi = min(lo + ROWS_PER_SLICE, rows.num_rows)
        logprobs = torch.log_softmax(logits[rows.first + lo: rows.first + hi].float(), dim=-1)
        chosen = logprobs.gather(1, targets[lo:hi, None])
        ranks = ((logprobs > chosen).sum(dim=1) + 1).tolist()  # 1 + the tokens likelier than the prompt's
        chosen = chosen[:, 0].tolist()
        top = torch.topk(logprobs, k) if k else None
        ids, values = (top.indices.tolist(), top.values.tolist()) if top is not None else ([[]] * (hi - lo),) * 2
        for i in range(hi - lo):
            req.prompt_logprobs[rows.start + lo + i + 1] = (chosen[i], list(zip(ids[i], values[i])), ranks[i])
    req.prompt_logprobs_done = rows.completes_prompt
