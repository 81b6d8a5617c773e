"""N-gram speculative decoding (prompt lookup): a running request's next tokens are drafted from its own text,
and one step checks them all.

Configured as vLLM's `--speculative-config '{"method": "ngram", "num_speculative_tokens": K,
"prompt_lookup_max": N, "prompt_lookup_min": M}'`: the longest suffix of the request's tokens (N tokens down to M)
that occurred before proposes the K tokens that followed its latest earlier occurrence. Answers that quote their
prompt (RAG, summaries, code edits) draft well; a request with no match decodes as usual.

The step computes the request's last token and the drafts (1 + K rows, each attending as a decode does, through
the request's block table up to its own position; a few rows cost less than as many steps, as the weights are
read once), samples the token after each row as plain decoding would (the same logit processors, with the drafts
before it as the history; a seeded request draws its n-th token from (seed, n)), and keeps the sampled tokens up
to and including the first one that differs from its draft. With a deterministic draft this is rejection
sampling: each kept token is a sample of the model's own distribution, so greedy answers are plain decoding's (up
to fp32 summation order: the linear kernels' order depends on the row count) and sampled ones keep their
distribution. Requests under a grammar are not speculated (its matcher would have to follow each draft).
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass

KEYS = {"method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "disable_by_batch_size"}
MAX_DRAFT_TOKENS = 16


@dataclass(frozen=True)
class NgramSpeculation:
    num_tokens: int  # K: drafts per step
    max_ngram: int = 4  # N: the longest suffix looked up
    min_ngram: int = 3  # M: the shortest (shorter ones match often in free text, and their drafts mostly fail)
    max_batch: int = 0  # vLLM's disable_by_batch_size: no drafts while more requests run (0: no limit)

    def __post_init__(self) -> None:
        if not 1 <= self.num_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"num_speculative_tokens must be 1 to {MAX_DRAFT_TOKENS}, got {self.num_tokens}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= prompt_lookup_min <= prompt_lookup_max, got {self.min_ngram}, "
                             f"{self.max_ngram}")
        if self.max_batch < 0:
            raise ValueError(f"disable_by_batch_size must be >= 0, got {self.max_batch}")

    def drafting(self, num_running: int) -> bool:
        return not self.max_batch or num_running <= self.max_batch

    @classmethod
    def from_json(cls, text: str) -> NgramSpeculation | None:
        """vLLM's --speculative-config as JSON (None for an empty string); ValueError naming what is wrong."""
        if not text:
            return None
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--speculative-config is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ValueError("--speculative-config must be a JSON object")
        unknown = sorted(set(config) - KEYS)
        if unknown:
            raise ValueError(f"--speculative-config: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(KEYS))}")
        if config.get("method") != "ngram":
            raise ValueError(f"--speculative-config: method must be \"ngram\" (prompt lookup), "
                             f"got {config.get('method')!r}")
        values = {key: config[key] for key in KEYS - {"method"} if key in config}
        wrong = sorted(k for k, v in values.items() if not isinstance(v, int) or isinstance(v, bool))
        if wrong:
            raise ValueError(f"--speculative-config: {', '.join(wrong)} must be integers")
        if "num_speculative_tokens" not in values:
            raise ValueError("--speculative-config: num_speculative_tokens is required")
        minimum = values.get("prompt_lookup_min", min(cls.min_ngram, values.get("prompt_lookup_max", cls.max_ngram)))
        return cls(values["num_speculative_tokens"], values.get("prompt_lookup_max", max(cls.max_ngram, minimum)),
                   minimum, values.get("disable_by_batch_size", 0))

    def propose(self, token_ids: list[int], limit: int) -> list[int]:
        """Up to min(K, limit) drafts: the tokens that followed the latest earlier occurrence of the longest suffix
        of `token_ids` (N down to M tokens) that has one; [] when none does."""
        limit = min(self.num_tokens, limit)
        if limit < 1 or len(token_ids) < self.min_ngram + 1:
            return []
        packed = array("q", token_ids).tobytes()  # a match is a byte search; 8 bytes per token
        for n in range(min(self.max_ngram, len(token_ids) - 1), self.min_ngram - 1, -1):
            start = _latest_earlier(packed, n, len(token_ids))
            if start is not None:
                return token_ids[start + n:start + n + limit]
        return []


def _latest_earlier(packed: bytes, n: int, num_tokens: int) -> int | None:
    """Where the last n tokens occurred last before, followed by at least one token (a token index), or None."""
    width = 8
    suffix = packed[-n * width:]
    end = (num_tokens - 1) * width  # the occurrence ends before the last token
    while True:
        found = packed.rfind(suffix, 0, end)
        if found < 0:
            return None
        if found % width == 0:
            return found // width
        end = found + len(suffix) - 1  # a match across token boundaries: look further back
