"""Embeddings: a prompt's final hidden states pooled into one vector (OpenAI's /v1/embeddings).

A pooling request runs its prompt like any prefill (chunked, batched with other requests) but
samples nothing: the rows it pools have their hidden states taken after the model's final norm
(HF's `last_hidden_state`), and the request finishes when its prompt has run. `last` pools the
last row (vLLM's default for a decoder model: the only row that has seen the whole prompt); `mean`
averages every row, so its prompt is never taken from the prefix cache (a cached block has no
hidden states). The vector is L2-normalized unless asked not to be, as vLLM and OpenAI do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from splitserve.engine.request import Request
from splitserve.engine.sampling import check_cache_salt, check_priority


class Pooling(str, enum.Enum):
    LAST = "last"
    MEAN = "mean"


@dataclass(frozen=True)
class PoolingParams:
    kind: Pooling = Pooling.LAST
    normalize: bool = True
    priority: int = 0  # as SamplingParams.priority: lower runs sooner
    cache_salt: str | None = None  # as SamplingParams.cache_salt: shares cached KV only with requests of this salt

    def __post_init__(self):
        try:
            object.__setattr__(self, "kind", Pooling(self.kind))
        except ValueError:
            raise ValueError(f"pooling must be one of {', '.join(p.value for p in Pooling)}, "
                             f"got {self.kind!r}") from None
        check_priority(self.priority)
        check_cache_salt(self.cache_salt)

    @property
    def needs_every_row(self) -> bool:
        return self.kind == Pooling.MEAN


@dataclass
class PooledRows:
    """A scheduled chunk's rows a request pools: positions [start, end); `first` is the first one's
    index among the step's hidden rows."""

    request: Request
    start: int
    end: int
    first: int

    @property
    def num_rows(self) -> int:
        return self.end - self.start


def pooled_rows(request: Request, start: int, num_new_tokens: int, first: int) -> PooledRows | None:
    """The rows of a chunk [start, start + num_new_tokens) that the request pools; None if it pools none."""
    pooling = request.pooling
    if pooling is None:
        return None
    end = start + num_new_tokens
    if pooling.kind == Pooling.LAST:
        return PooledRows(request, end - 1, end, first) if end == request.num_prompt_tokens else None
    return PooledRows(request, start, end, first)


def record(rows: PooledRows, hidden: torch.Tensor) -> None:
    """Adds these rows of the step's final hidden states [rows, hidden] (fp32) to the request's sum; the
    chunk that ends the prompt sets `request.embedding`. A chunk at position 0 starts the sum again (a
    preempted request computes its prompt again)."""
    req = rows.request
    part = hidden[rows.first: rows.first + rows.num_rows].sum(dim=0)
    restart = rows.start == 0 or req.pooling.kind == Pooling.LAST or req.pooled_sum is None
    req.pooled_sum = part if restart else req.pooled_sum + part
    if rows.end == req.num_prompt_tokens:
        req.embedding = finish(req.pooled_sum, req.num_prompt_tokens, req.pooling)


def finish(total: torch.Tensor, num_rows: int, pooling: PoolingParams) -> list[float]:
    vector = total / num_rows if pooling.kind == Pooling.MEAN else total
    if pooling.normalize:
        vector = torch.nn.functional.normalize(vector, dim=0)
    return vector.tolist()
