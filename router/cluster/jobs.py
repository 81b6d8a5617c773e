"""A routed request (Job) and the events the orchestrator yields for it (Tokens, then one Done)."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitserve.engine import SamplingParams
from splitserve.node_api import Logprob
from router.cluster.policies import Route
from router.cluster.prefix_index import PromptHashes


@dataclass(frozen=True)
class Job:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams  # stop strings are the router's; nodes never see them
    num_prior_output_tokens: int = 0
    chunks: tuple[tuple[int, int], ...] = ()  # RAG documents as (start, length) spans of the prompt
    # the prompt's block hashes, computed once for every routing step (made anew by dataclasses.replace)
    hashes: PromptHashes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashes", PromptHashes(self.prompt_token_ids))


@dataclass
class Tokens:
    token_ids: list[int]
    logprobs: list[Logprob] = field(default_factory=list)
    prompt_logprobs: list | None = None  # params.prompt_logprobs: with the first tokens (entry 0 None)


@dataclass
class Done:
    finish_reason: str
    num_cached_tokens: int
    route: Route
    prefill_s: float = 0.0
    transfer_s: float = 0.0
