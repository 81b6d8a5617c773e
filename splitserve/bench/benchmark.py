"""One benchmark = workload x arrivals x target -> records -> vLLM-style metrics.

`run_benchmark(config)` is what `splitserve bench` and the benchmark scripts call;
`sweep(config, rates)` repeats it per request rate for a goodput curve.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from urllib.parse import urlsplit

from splitserve.bench.arrivals import ArrivalConfig, arrival_offsets
from splitserve.bench.metrics import BenchmarkMetrics, compute_metrics, output_len
from splitserve.bench.progress import Progress
from splitserve.bench.prompts import TokenizerLike, load_tokenizer
from splitserve.bench.runner import RunConfig, RunResult, run
from splitserve.bench.targets import TargetOptions, is_embeddings, make_target
from splitserve.bench.workloads import Workload, WorkloadConfig, make_workload


@dataclass(frozen=True)
class BenchConfig:
    url: str
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    arrival: ArrivalConfig = field(default_factory=ArrivalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    target: TargetOptions = field(default_factory=TargetOptions)
    num_requests: int | None = None  # with run.duration_s unset and no trace: required
    warmup: int = 0
    tokenizer: str | None = None  # model folder holding tokenizer.json
    percentiles: tuple[float, ...] = (99.0,)
    slos_ms: dict = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self):
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        bounded = self.num_requests is not None or self.run.duration_s is not None
        if not bounded and self.arrival.kind != "trace":
            raise ValueError("give a request count or a duration (--num-requests N | --duration-s S)")
        if math.isinf(self.arrival.rate) and self.num_requests is None and self.run.max_concurrency is None \
                and self.arrival.kind != "trace":
            raise ValueError("a duration at an infinite request rate needs a concurrency limit (--concurrency C)")
        if self.arrival.ramp is not None and self.num_requests is None:
            raise ValueError("a ramp needs a request count (--num-requests): its rate moves from request to request")
        if self.embeddings and self.workload.name == "rag" and not self.workload.rag_inline:
            raise ValueError("an embeddings request has no documents: with the rag workload give --rag-inline")

    @property
    def embeddings(self) -> bool:
        """True when the requests are embeddings (the endpoint, or the URL's path, is /v1/embeddings)."""
        return is_embeddings(self.target.endpoint) or is_embeddings(urlsplit(self.url).path)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["target"]["headers"] = {k: "<redacted>" for k in d["target"]["headers"]}
        return _jsonable(d)


@dataclass
class BenchResult:
    config: dict
    metrics: BenchmarkMetrics
    run: RunResult


def run_benchmark(config: BenchConfig, tokenizer: TokenizerLike | None = None,
                  workload: Workload | None = None, progress: Progress | None = None) -> BenchResult:
    tokenizer = _resolve_tokenizer(config, tokenizer)
    workload = workload or make_workload(config.workload, tokenizer)
    trace = workload.timestamps() if config.arrival.kind == "trace" else None
    offsets = arrival_offsets(config.arrival, config.num_requests, config.run.duration_s, trace)
    requests = workload.requests()
    if trace is not None and config.warmup:
        # keep the trace aligned: warm up on a separate pass over its first rows, with other text
        # (another seed), so the warm-up does not fill the prefix cache for the measured prompts
        other = make_workload(dataclasses.replace(config.workload, seed=config.workload.seed + 1), tokenizer)
        warmup = list(islice(other.requests(), config.warmup))
    else:
        warmup = list(islice(requests, config.warmup))
    options = dataclasses.replace(config.target, max_connections=config.run.max_concurrency or 0)
    result = run(make_target(config.url, options), zip(offsets, requests), config.run, warmup, progress)
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    for record in result.records:  # no usage from the server: count the text, as vLLM does
        if record.success and not record.output_tokens:
            record.output_tokens = output_len(record, count)
    metrics = compute_metrics(result.records, result.duration_s, config.percentiles, config.slos_ms)
    return BenchResult({**config.to_dict(), "target_info": result.target, "embeddings": config.embeddings},
                       metrics, result)


def sweep(config: BenchConfig, rates: Sequence[float], tokenizer: TokenizerLike | None = None,
          progress_factory=None) -> list[BenchResult]:
    """One run per request rate (same workload and seed), for a goodput-vs-rate curve."""
    tokenizer = _resolve_tokenizer(config, tokenizer)
    workload = make_workload(config.workload, tokenizer)
    results = []
    for rate in rates:
        arrival = dataclasses.replace(config.arrival, rate=float(rate))
        progress = progress_factory(f"rate {rate:g}") if progress_factory else None
        results.append(run_benchmark(dataclasses.replace(config, arrival=arrival), tokenizer, workload, progress))
    return results


def _resolve_tokenizer(config: BenchConfig, tokenizer: TokenizerLike | None) -> TokenizerLike:
    if tokenizer is not None:
        return tokenizer
    if not config.tokenizer:
        raise ValueError("prompts are built with the served model's tokenizer: give --tokenizer MODEL_DIR")
    return load_tokenizer(config.tokenizer)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", as vLLM writes an infinite request rate
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
