"""What each request asks for: prompt text, prompt/output token counts, RAG documents.

Workloads (by name, see WORKLOADS):
- fixed: every request has --input-len prompt tokens and --output-len output tokens.
- sharegpt, arxiv: (prompt, output) lengths sampled from the token statistics files.
- azure-code, azure-conv: the Azure 2023 trace rows in order, with their timestamps for
  trace replay, optionally cut to a time window.
- mooncake: a Mooncake trace file (JSON lines); each 512-token block of `hash_ids` becomes a
  fixed block of text, so the same hash id is the same text and prefix reuse is kept.
- rag: k MuSiQue passages plus the question; the passage set (one per question) is chosen with
  Zipf popularity, its passages shuffled per request, sent as `documents`; with max_input_len,
  each passage is cut to max_input_len // k tokens.
Prompt text of a given length comes from real text (prompts.TextSource).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import numpy as np

from splitserve.bench import traces
from splitserve.bench.prompts import TextSource, TokenizerLike


@dataclass(frozen=True)
class BenchRequest:
    request_id: int
    prompt: str
    prompt_tokens: int  # counted with the served model's tokenizer (mooncake: the trace's input_length)
    output_tokens: int  # forced output length (max_tokens, with ignore_eos where supported)
    documents: tuple[str, ...] | None = None
    timestamp_s: float | None = None  # trace time, for trace replay


@dataclass(frozen=True)
class WorkloadConfig:
    name: str = "fixed"
    input_len: int = 1024
    output_len: int = 128
    seed: int = 0
    trace_file: str | None = None  # required for mooncake; overrides the default file otherwise
    window_s: tuple[float, float] | None = None  # trace workloads: [start, end) s from the first row
    max_input_len: int | None = None  # clip sampled/trace lengths (rag: its passages)
    max_output_len: int | None = None  # clip sampled/trace lengths and output_len
    rag_passages: int = 5
    rag_zipf: float = 1.0  # Zipf exponent over passage sets; 0 = uniform
    rag_inline: bool = False  # put the passages in the prompt instead of `documents`

    def __post_init__(self):
        for name in ("input_len", "output_len", "rag_passages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_input_len", "max_output_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 when set, got {getattr(self, name)}")
        if self.rag_zipf < 0:
            raise ValueError(f"rag_zipf must be >= 0, got {self.rag_zipf}")
        if self.window_s is not None and not 0 <= self.window_s[0] < self.window_s[1]:
            raise ValueError(f"window must be START:END with 0 <= START < END, got {self.window_s}")

    def clip(self, input_len: int, output_len: int) -> tuple[int, int]:
        return (max(1, min(input_len, self.max_input_len or input_len)),
                max(1, min(output_len, self.max_output_len or output_len)))

    @property
    def fixed_output_len(self) -> int:
        """output_len clipped to max_output_len: the fixed and rag workloads' output length."""
        return self.clip(1, self.output_len)[1]


class Workload(ABC):
    """A source of requests for the runner.

    `requests()` yields BenchRequests in send order, deterministic for the config's seed; it is
    endless for synthetic workloads (the runner stops at its count or duration) and finite for
    trace workloads. `timestamps()` returns the trace times (s) aligned one to one with
    `requests()` for trace replay, or None when the workload has no timing.
    """

    @abstractmethod
    def requests(self) -> Iterator[BenchRequest]: ...

    def timestamps(self) -> list[float] | None:
        return None


class FixedWorkload(Workload):
    def __init__(self, config: WorkloadConfig, source: TextSource):
        self.config, self.source = config, source

    def requests(self) -> Iterator[BenchRequest]:
        rng = np.random.default_rng(self.config.seed)
        for i in count():
            text, n = self.source.prompt(self.config.input_len, rng)
            yield BenchRequest(i, text, n, self.config.fixed_output_len)


class SampledLengthsWorkload(Workload):
    """Lengths drawn uniformly (with replacement) from the rows of a statistics file."""

    def __init__(self, config: WorkloadConfig, source: TextSource, rows: list[traces.TraceRow]):
        if not rows:
            raise ValueError("no rows to sample lengths from")
        self.config, self.source, self.rows = config, source, rows

    def requests(self) -> Iterator[BenchRequest]:
        rng = np.random.default_rng(self.config.seed)
        for i in count():
            row = self.rows[int(rng.integers(len(self.rows)))]
            input_len, output_len = self.config.clip(row.input_len, row.output_len)
            text, n = self.source.prompt(input_len, rng)
            yield BenchRequest(i, text, n, output_len)


class TraceWorkload(Workload):
    """Trace rows in order (Azure, Mooncake), cut to the window; finite."""

    def __init__(self, config: WorkloadConfig, source: TextSource, rows: list[traces.TraceRow]):
        if config.window_s is not None:
            rows = traces.window(rows, *config.window_s)
        if not rows:
            raise ValueError(f"the trace has no rows in the window {config.window_s}")
        self.config, self.source, self.rows = config, source, rows

    def timestamps(self) -> list[float]:
        return [row.time_s - self.rows[0].time_s for row in self.rows]

    def requests(self) -> Iterator[BenchRequest]:
        rng = np.random.default_rng(self.config.seed)
        for i, (row, t) in enumerate(zip(self.rows, self.timestamps())):
            input_len, output_len = self.config.clip(row.input_len, row.output_len)
            if row.hash_ids:
                text, n = self.mooncake_prompt(row.hash_ids, input_len), input_len
            else:
                text, n = self.source.prompt(input_len, rng)
            yield BenchRequest(i, text, n, output_len, timestamp_s=t)

    def mooncake_prompt(self, hash_ids: tuple[int, ...], input_len: int) -> str:
        """One text block per hash id (512 tokens; the last one holds the remainder)."""
        size = traces.MOONCAKE_BLOCK_TOKENS
        parts = []
        for k, hash_id in enumerate(hash_ids):
            n = min(size, input_len - k * size)
            if n <= 0:
                break
            parts.append(self.source.block(hash_id, n, self.config.seed))
        return "".join(parts)


class RagWorkload(Workload):
    def __init__(self, config: WorkloadConfig, tokenizer: TokenizerLike, items: list[tuple[str, tuple[str, ...]]]):
        if not items:
            raise ValueError("no RAG questions")
        self.config, self.tokenizer, self.items = config, tokenizer, items
        self._lengths: dict[str, int] = {}

    def popularity(self) -> np.ndarray:
        """P(passage set i): Zipf over a seeded ranking of the sets, p(rank r) ~ 1/r^s."""
        ranks = np.empty(len(self.items))
        ranks[np.random.default_rng(self.config.seed).permutation(len(self.items))] = np.arange(1, len(self.items) + 1)
        weights = ranks ** -self.config.rag_zipf
        return weights / weights.sum()

    def requests(self) -> Iterator[BenchRequest]:
        rng = np.random.default_rng(self.config.seed + 1)
        probs = self.popularity()
        k = self.config.rag_passages
        for i in count():
            question, passages = self.items[int(rng.choice(len(self.items), p=probs))]
            docs = tuple(self._clip(passages[j]) for j in rng.permutation(min(k, len(passages))))
            n = self._count(question) + sum(self._count(d) for d in docs)
            if self.config.rag_inline:
                yield BenchRequest(i, "\n\n".join(docs + (question,)), n, self.config.fixed_output_len)
            else:
                yield BenchRequest(i, question, n, self.config.fixed_output_len, documents=docs)

    def _clip(self, passage: str) -> str:
        """With max_input_len: each passage cut to its share, max_input_len // k tokens."""
        if self.config.max_input_len is None:
            return passage
        share = max(1, self.config.max_input_len // self.config.rag_passages)
        if self._count(passage) <= share:
            return passage
        return self.tokenizer.decode(self.tokenizer.encode(passage, add_special_tokens=False)[:share])

    def _count(self, text: str) -> int:
        if text not in self._lengths:
            self._lengths[text] = len(self.tokenizer.encode(text, add_special_tokens=False))
        return self._lengths[text]


_SOURCES: dict[int, tuple[TokenizerLike, TextSource]] = {}  # per tokenizer: tokenizing the text takes a while


def _text_source(tokenizer: TokenizerLike) -> TextSource:
    if id(tokenizer) not in _SOURCES:
        items = traces.load_musique(traces.data_file(traces.MUSIQUE_FILE))
        _SOURCES[id(tokenizer)] = (tokenizer, TextSource(tokenizer, [p for _, passages in items for p in passages]))
    return _SOURCES[id(tokenizer)][1]


def _lengths(config: WorkloadConfig, tokenizer: TokenizerLike) -> Workload:
    rows = traces.load_lengths(traces.data_file(traces.LENGTH_FILES[config.name], config.trace_file))
    return SampledLengthsWorkload(config, _text_source(tokenizer), rows)


def _azure(config: WorkloadConfig, tokenizer: TokenizerLike) -> Workload:
    rows = traces.load_azure(traces.data_file(traces.AZURE_FILES[config.name], config.trace_file))
    return TraceWorkload(config, _text_source(tokenizer), rows)


def _mooncake(config: WorkloadConfig, tokenizer: TokenizerLike) -> Workload:
    if not config.trace_file:
        raise ValueError("the mooncake workload needs a trace file (--trace-file PATH.jsonl)")
    rows = traces.load_mooncake(traces.data_file("", config.trace_file))
    return TraceWorkload(config, _text_source(tokenizer), rows)


def _rag(config: WorkloadConfig, tokenizer: TokenizerLike) -> Workload:
    path = traces.data_file(traces.MUSIQUE_FILE, config.trace_file)
    return RagWorkload(config, tokenizer, traces.load_musique(path))


WORKLOADS = {
    "fixed": lambda config, tokenizer: FixedWorkload(config, _text_source(tokenizer)),
    "sharegpt": _lengths,
    "arxiv": _lengths,
    "azure-code": _azure,
    "azure-conv": _azure,
    "mooncake": _mooncake,
    "rag": _rag,
}


def make_workload(config: WorkloadConfig, tokenizer: TokenizerLike) -> Workload:
    if config.name not in WORKLOADS:
        raise KeyError(f"unknown workload {config.name!r}; known: {', '.join(WORKLOADS)}")
    return WORKLOADS[config.name](config, tokenizer)
