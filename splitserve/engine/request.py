"""A request owns its tokens, its progress counters and its block table."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from splitserve.engine.block_pool import kv_root
from splitserve.engine.sampling import SamplingParams

if TYPE_CHECKING:
    import torch

    from splitserve.engine.lora import LoraAdapter
    from splitserve.engine.pooling import PoolingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"
    ABORT = "abort"
    PREFILLED = "prefilled"  # prefill-only: prompt done, first token sampled, KV handed over
    POOLED = "pooled"  # an embedding request: prompt done, its vector taken


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    prefill_only: bool = False
    # Output tokens produced before this engine saw the request (a decode node's first token
    # from prefill, or tokens already streamed before a failover); they count for max_tokens
    # and advance the seeded sampler.
    num_prior_output_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # hashes of the leading full blocks
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    logprobs: list = field(default_factory=list)
    # params.prompt_logprobs: entry p is (logprob, top, rank) of prompt token p given the ones before it (entry 0:
    # None); filled as the prompt's chunks run, complete once `prompt_logprobs_done`
    prompt_logprobs: list = field(default_factory=list)
    prompt_logprobs_done: bool = False
    matcher: object = field(default=None, repr=False)  # params.grammar's llguidance matcher (grammar.py)
    arrival_time_s: float = 0.0
    keep_blocks: bool = False  # prefill-only: blocks stay allocated until released by the caller
    pooling: PoolingParams | None = None  # an embedding request (pooling.py): samples nothing
    pooled_sum: torch.Tensor | None = field(default=None, repr=False)  # its pooled rows so far
    embedding: list[float] | None = None  # set when its prompt has run
    adapter: LoraAdapter | None = field(default=None, repr=False)  # params.lora's, taken at admission (lora.py)
    draft_token_ids: list[int] = field(default_factory=list)  # speculation.py: its next step checks these drafts

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return self.num_prior_output_tokens + len(self.output_token_ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None

    @property
    def is_embedding(self) -> bool:
        return self.pooling is not None

    @property
    def needs_every_prompt_row(self) -> bool:
        """Prompt logprobs or mean pooling: no prompt row may come from the prefix cache."""
        return self.wants_prompt_logprobs or (self.is_embedding and self.pooling.needs_every_row)

    @property
    def hash_root(self) -> bytes:
        """Where its blocks' hash chain starts: its cache salt's and LoRA adapter's root (the adapter as loaded: one
        loaded again under the name shares nothing with it), or the shared one."""
        return kv_root(self.params.kv_namespace, None if self.adapter is None else self.adapter.load_id)

    def penalty_history(self) -> tuple[list[int], list[int]]:
        return penalty_history(self.prompt_token_ids, self.output_token_ids, self.num_prior_output_tokens)

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED


def penalty_history(prompt_token_ids: list[int], output_token_ids: list[int],
                    num_prior_output_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt, output) tokens as sampling penalties see them: the prompt's last num_prior_output_tokens
    are output (a continuation after a failover carries the tokens already streamed in its prompt)."""
    split = max(0, len(prompt_token_ids) - num_prior_output_tokens)
    return prompt_token_ids[:split], prompt_token_ids[split:] + output_token_ids
