"""Sampling parameters of a request, validated at the door."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_TOP_LOGPROBS = 20
UINT32_END = 2**32  # counts travel as uint32 between router and nodes


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # top-k logprobs per sampled token; None: off
    min_tokens: int = 0

    def __post_init__(self):
        _check(isinstance(self.max_tokens, int) and 1 <= self.max_tokens < UINT32_END,
               f"max_tokens must be in [1, 2**32), got {self.max_tokens}")
        _check(0 <= self.temperature < math.inf, f"temperature must be >= 0 and finite, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _check(0 <= self.top_k < UINT32_END, f"top_k must be in [0, 2**32) (0 disables it), got {self.top_k}")
        _check(0 <= self.min_tokens < UINT32_END, f"min_tokens must be in [0, 2**32), got {self.min_tokens}")
        _check(self.seed is None or 0 <= self.seed < 2**63, f"seed must be in [0, 2**63), got {self.seed}")
        _check(self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
               f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
