"""Turns next-token logits into tokens: logit bias, penalties, greedy, temperature, top-k, top-p, min-p,
per-request seeds.

A request's logit bias, penalties and grammar mask change its logits before anything else (and so its greedy
token and its logprobs), in vLLM's order: OpenAI's logit_bias added first; then HF's / vLLM's
repetition penalty over the prompt and output tokens, then OpenAI's frequency and presence
penalties over the output tokens (a request's output includes tokens produced before this
engine saw it: `Request.penalty_history`).

A seeded request draws its n-th output token from a generator seeded by (seed, n), so its
tokens do not depend on the batch it ran in, on preemption, or on which node sampled them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from splitserve.engine.sampling import SamplingParams

_MIX = 0x9E3779B97F4A7C15


@dataclass
class SampleRequest:
    params: SamplingParams
    output_index: int  # how many output tokens the request already has
    banned_token_ids: tuple[int, ...] = ()  # e.g. EOS before min_tokens
    prompt_token_ids: Sequence[int] = ()  # read only when params.penalized
    output_token_ids: Sequence[int] = ()
    allowed: torch.Tensor | None = None  # bool [vocab]: the tokens its grammar takes next (None: all)


@dataclass
class Sample:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


def sample(logits: torch.Tensor, requests: list[SampleRequest], generator: torch.Generator | None = None) -> list[Sample]:
    """logits: [S, vocab] fp32, one row per request."""
    if any(req.banned_token_ids or req.params.penalized or req.params.logit_bias or req.allowed is not None
           for req in requests):
        logits = logits.clone()  # the model's output may be an inference tensor, which is read-only out here
    for row, req in enumerate(requests):
        if req.params.logit_bias:
            _add_bias(logits[row], req.params.logit_bias)
        if req.params.penalized:
            _penalize(logits[row], req)
        if req.allowed is not None:
            logits[row].masked_fill_(~req.allowed, float("-inf"))
        if req.banned_token_ids:
            _ban(logits[row], list(req.banned_token_ids), masked=req.allowed is not None)
    greedy_ids = logits.argmax(dim=-1).tolist()
    want_logprobs = any(r.params.logprobs is not None for r in requests)
    logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    samples = []
    for row, req in enumerate(requests):
        token = greedy_ids[row] if req.params.greedy else _sample_row(logits[row], req, generator)
        samples.append(_with_logprobs(token, row, req.params.logprobs, logprobs))
    return samples


def _ban(logits: torch.Tensor, token_ids: list[int], masked: bool) -> None:
    """-inf for these tokens of one row, unless no other token is left (a grammar that takes only EOS now;
    `masked`: a grammar mask put -inf on the row, so it is looked at, else only the count is)."""
    if masked:
        left = torch.isfinite(logits)
        left[token_ids] = False
        if not left.any():
            return
    elif len(set(token_ids)) >= logits.shape[-1]:
        return
    logits[token_ids] = float("-inf")


def _add_bias(logits: torch.Tensor, bias: tuple[tuple[int, float], ...]) -> None:
    """In place on one row [vocab]; ids past the row (checked at the door) are skipped."""
    kept = [(t, b) for t, b in bias if t < logits.shape[-1]]
    ids = torch.tensor([t for t, _ in kept], dtype=torch.long, device=logits.device)
    logits[ids] += torch.tensor([b for _, b in kept], dtype=logits.dtype, device=logits.device)


def _penalize(logits: torch.Tensor, req: SampleRequest) -> None:
    """In place on one row [vocab]."""
    p, vocab = req.params, logits.shape[-1]
    output = torch.tensor(list(req.output_token_ids), dtype=torch.long, device=logits.device)
    if p.repetition_penalty != 1.0:
        seen = torch.cat([torch.tensor(list(req.prompt_token_ids), dtype=torch.long, device=logits.device), output])
        seen = seen[(seen >= 0) & (seen < vocab)].unique()
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and output.numel():
        counts = torch.bincount(output[(output >= 0) & (output < vocab)], minlength=vocab)[:vocab].to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def _sample_row(logits: torch.Tensor, req: SampleRequest, generator: torch.Generator | None) -> int:
    p = req.params
    probs = distribution(logits, p)
    if p.seed is not None:
        generator = torch.Generator().manual_seed((p.seed * _MIX + req.output_index) % (1 << 63))
    return int(torch.multinomial(probs, 1, generator=generator))


def distribution(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """What one row [vocab] is sampled from (on the CPU, not normalized): temperature, then top-k, top-p and
    min-p in the order HF's warpers run (vLLM runs min-p first: the same unless top_p is set too)."""
    # from the maximum down: a tiny temperature gives 0 and -inf (greedy), never inf - inf = nan
    logits = (logits - logits.max()) / p.temperature
    if p.top_k:
        kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1).cpu()  # generators live on the CPU, whatever the device
    if p.top_p < 1.0:
        probs = _top_p(probs, p.top_p)
    if p.min_p:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    return probs


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = probs.sort(descending=True)
    cumulative = sorted_probs.cumsum(0)
    drop = cumulative - sorted_probs > top_p  # keeps the smallest set whose mass reaches top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(0, order, sorted_probs)


def _with_logprobs(token: int, row: int, k: int | None, logprobs: torch.Tensor | None) -> Sample:
    if k is None or logprobs is None:
        return Sample(token)
    top = torch.topk(logprobs[row], k) if k else None
    top_list = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
    return Sample(token, float(logprobs[row, token]), top_list)
