"""Per-request records and the aggregate serving metrics, as `vllm bench serve` defines them.

Definitions followed (vllm-project/vllm `vllm/benchmarks/serve.py: calculate_metrics` and
`vllm/benchmarks/lib/endpoint_request_func.py`, summarised in
shared/research/benchmark-conventions.md section 2):

- TTFT: first streamed chunk that carries output (`choices`) minus the send time.
- ITL: every later chunk's gap to the previous chunk, pooled over all requests (a chunk holding
  several tokens gives one sample; a token-per-message stream gives one per token).
- E2EL: last such chunk minus the send time.
- TPOT: (E2EL - TTFT) / (output_tokens - 1), only for requests with more than one output
  token; for goodput a request with at most one output token has TPOT 0.
- Output tokens: the server's `usage.completion_tokens`; when absent, the generated text
  re-tokenized (or 1 without a tokenizer, as vLLM does).
- Failed requests count only in `failed`: they add nothing to tokens, latencies or goodput.
- Retries: requests resent once because the server closed their (pooled keep-alive)
  connection before any byte of a response; counted apart (`retries`), never as failures.
- Throughputs: completed requests, Σ output tokens and Σ (prompt + output) tokens of the
  completed requests, over the benchmark duration (main run start to the last return).
- Stats: mean, median, population std (np.std), percentiles with numpy's linear
  interpolation; an empty sample reports 0 (vLLM's `values or 0`).
- Goodput: completed requests whose every given SLO (ms) holds with `value <= SLO`, per second.
- Peak output token throughput: most streamed chunks in a 1 s bucket counted from the first
  send; peak concurrent requests: sweep over the [send, last chunk) intervals.
- Embeddings (`/v1/embeddings`, gRPC `Embed`), as vLLM's `openai-embeddings` backend: one
  answer, no stream; its arrival is the one "chunk" (TTFT = E2EL), output tokens 0, so no TPOT,
  ITL or output throughput; the total token throughput is the input tokens embedded per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_METRICS = ("ttft", "tpot", "e2el")
NO_CHUNK_ERROR = "Never received a valid chunk to calculate TTFT."


@dataclass
class RequestRecord:
    """What the client saw of one request; times are `time.perf_counter()` seconds.

    A target calls `mark_sent()` right before sending, `mark_token(text)` for each streamed
    chunk (or message) carrying output, then exactly one of `finish(output_tokens)` or
    `fail(error)`. A target that resends the request counts it in `retries` and marks it
    sent again (TTFT runs from the send that was answered).
    """

    request_id: int
    prompt_tokens: int
    expected_output_tokens: int
    scheduled_s: float = 0.0  # planned send offset from the run start
    warmup: bool = False
    send_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    generated_text: str = ""
    token_ids: list[int] = field(default_factory=list)  # filled by targets that see ids (gRPC)
    success: bool = False
    error: str = ""
    done: bool = False
    end_time: float | None = None  # when finish() or fail() was called
    retries: int = 0  # resends after the server closed the connection before answering
    pooled: bool = False  # an embedding: answered whole, no output tokens

    def mark_sent(self) -> None:
        self.send_time = time.perf_counter()

    def mark_token(self, text: str = "") -> None:
        self.token_times.append(time.perf_counter())
        self.generated_text += text

    def finish(self, output_tokens: int | None = None) -> None:
        if self.done:
            return
        self.output_tokens = output_tokens
        if self.send_time is None or not self.token_times:
            self.fail(NO_CHUNK_ERROR)
            return
        self.success, self.done, self.end_time = True, True, time.perf_counter()

    def finish_pooled(self) -> None:
        """An embedding answered: its arrival is the one chunk; it generated nothing."""
        self.pooled = True
        self.mark_token()
        self.finish(0)

    def fail(self, error: str) -> None:
        if self.done:
            return
        self.success, self.error, self.done, self.end_time = False, error or "failed", True, time.perf_counter()

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.send_time

    @property
    def e2el_s(self) -> float:
        return self.token_times[-1] - self.send_time

    @property
    def itls_s(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]


def output_len(record: RequestRecord, count_tokens: Callable[[str], int] | None = None) -> int:
    """Server-reported count; else re-tokenized text; else 1 (vLLM's fallbacks); 0 for an embedding."""
    if record.pooled:
        return 0
    if record.output_tokens:
        return record.output_tokens
    return count_tokens(record.generated_text) if count_tokens else 1


def tpot_s(record: RequestRecord, num_output: int) -> float | None:
    """(E2EL - TTFT) / (n - 1) for n > 1; None for one-token outputs (excluded from TPOT)."""
    if num_output <= 1:
        return None
    return (record.e2el_s - record.ttft_s) / (num_output - 1)


@dataclass(frozen=True)
class Stats:
    mean_ms: float
    median_ms: float
    std_ms: float
    percentiles_ms: tuple[tuple[float, float], ...]

    @classmethod
    def of(cls, values_s: Sequence[float], percentiles: Sequence[float]) -> "Stats":
        data = list(values_s) or 0  # vLLM reports 0 for an empty sample
        pct = tuple((float(p), float(np.percentile(data, p)) * 1000) for p in percentiles)
        return cls(float(np.mean(data)) * 1000, float(np.median(data)) * 1000, float(np.std(data)) * 1000, pct)


def percentile_word(p: float) -> str:
    """99 -> '99', 99.9 -> '99.9' (vLLM's key naming: p99_ttft_ms, p99.9_ttft_ms)."""
    return str(int(p)) if int(p) == p else str(p)


@dataclass(frozen=True)
class BenchmarkMetrics:
    completed: int
    failed: int
    duration_s: float
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float | None  # None when no SLO was given
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    stats: dict[str, Stats]
    retries: int = 0  # resends of main-run requests (connection closed before a response)

    def to_dict(self) -> dict:
        """vLLM's result keys (`mean_ttft_ms`, `p99_tpot_ms`, ...)."""
        out = {
            "duration": self.duration_s, "completed": self.completed, "failed": self.failed,
            "total_input_tokens": self.total_input, "total_output_tokens": self.total_output,
            "request_throughput": self.request_throughput, "request_goodput": self.request_goodput,
            "output_throughput": self.output_throughput, "total_token_throughput": self.total_token_throughput,
            "max_output_tokens_per_s": self.max_output_tokens_per_s,
            "max_concurrent_requests": self.max_concurrent_requests, "retries": self.retries,
        }
        for name, s in self.stats.items():
            out[f"mean_{name}_ms"], out[f"median_{name}_ms"], out[f"std_{name}_ms"] = s.mean_ms, s.median_ms, s.std_ms
            for p, value in s.percentiles_ms:
                out[f"p{percentile_word(p)}_{name}_ms"] = value
        return out


def compute_metrics(
    records: Sequence[RequestRecord],
    duration_s: float,
    percentiles: Sequence[float] = (99.0,),
    slos_ms: dict[str, float] | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> BenchmarkMetrics:
    """Aggregate main-run records (warm-up records are skipped) into vLLM's metrics."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    records = [r for r in records if not r.warmup]
    ok = [r for r in records if r.success]
    lens = [output_len(r, count_tokens) for r in ok]
    tpots = [tpot_s(r, n) for r, n in zip(ok, lens)]
    samples = {
        "ttft": [r.ttft_s for r in ok],
        "tpot": [t for t in tpots if t is not None],
        "itl": [gap for r in ok for gap in r.itls_s],
        "e2el": [r.e2el_s for r in ok],
    }
    total_input = sum(r.prompt_tokens for r in ok)
    goodput = None
    if slos_ms:
        goodput = _count_good(ok, [t or 0.0 for t in tpots], slos_ms) / duration_s
    peak_tokens, peak_conc = peak_metrics(ok)
    return BenchmarkMetrics(
        completed=len(ok), failed=len(records) - len(ok), duration_s=duration_s,
        total_input=total_input, total_output=sum(lens),
        request_throughput=len(ok) / duration_s, request_goodput=goodput,
        output_throughput=sum(lens) / duration_s, total_token_throughput=(total_input + sum(lens)) / duration_s,
        max_output_tokens_per_s=peak_tokens, max_concurrent_requests=peak_conc,
        stats={name: Stats.of(samples[name], percentiles) for name in PERCENTILE_METRICS},
        retries=sum(r.retries for r in records),
    )


def _count_good(ok: Sequence[RequestRecord], all_tpots: Sequence[float], slos_ms: dict[str, float]) -> int:
    good = 0
    for r, tpot in zip(ok, all_tpots):
        values = {"ttft": r.ttft_s, "tpot": tpot, "e2el": r.e2el_s}
        good += all(values[name] <= slo / 1000 for name, slo in slos_ms.items())
    return good


def peak_metrics(ok: Sequence[RequestRecord]) -> tuple[float, int]:
    """(most chunks in one 1 s bucket from the first send, peak requests in flight)."""
    if not ok:
        return 0.0, 0
    t0 = min(r.send_time for r in ok)
    buckets = np.zeros(int(np.ceil(max(r.token_times[-1] for r in ok) - t0)) + 1)
    for r in ok:
        for t in [] if r.pooled else r.token_times:
            buckets[int(t - t0)] += 1
    events = sorted([(r.send_time, 1) for r in ok] + [(r.token_times[-1], -1) for r in ok])
    level = peak = 0
    for _, delta in events:  # ties: -1 sorts first (half-open intervals)
        level += delta
        peak = max(peak, level)
    return float(buckets.max()), peak


def parse_slos(text: str | None) -> dict[str, float]:
    """'ttft:500,tpot:50' (or space-separated, as vLLM's --goodput) -> {'ttft': 500.0, ...} ms."""
    if not text:
        return {}
    slos = {}
    for pair in text.replace(",", " ").split():
        name, sep, value = pair.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"SLO {pair!r}: expected NAME:MS with NAME one of {', '.join(SLO_METRICS)}")
        slos[name] = float(value)
        if slos[name] < 0:
            raise ValueError(f"SLO {pair!r}: the value must be non-negative (ms)")
    return slos


def parse_percentiles(text: str) -> tuple[float, ...]:
    """'50,90,99' -> (50.0, 90.0, 99.0); each in [0, 100]."""
    values = tuple(float(p) for p in text.replace(" ", "").split(",") if p)
    if not values or any(not 0 <= p <= 100 for p in values):
        raise ValueError(f"percentiles {text!r}: expected a comma list of numbers in [0, 100]")
    return values
