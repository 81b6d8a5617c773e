"""A fixed chat-shaped load through `splitserve bench`, shared by the served-latency benchmarks (api_fronts,
embeddings_interference, batch_priority): `--num-requests` requests of `--input-len` prompt / `--output-len`
output tokens (forced), `--concurrency` in flight, all at once, over OpenAI HTTP; any failed request ends the
benchmark, naming it."""

from __future__ import annotations

from splitserve.bench.arrivals import ArrivalConfig
from splitserve.bench.benchmark import BenchConfig, BenchResult, run_benchmark
from splitserve.bench.runner import RunConfig
from splitserve.bench.targets import TargetOptions
from splitserve.bench.workloads import WorkloadConfig


def run_fixed_load(url: str, args, tokenizer, endpoint: str = "/v1/chat/completions", seed: int = 0,
                   max_time_s: float = 900) -> BenchResult:
    workload = WorkloadConfig(input_len=args.input_len, output_len=args.output_len, seed=seed)
    config = BenchConfig(url=url, workload=workload, arrival=ArrivalConfig(), num_requests=args.num_requests,
                         percentiles=(50.0, 99.0), run=RunConfig(max_concurrency=args.concurrency,
                                                                 max_time_s=max_time_s),
                         target=TargetOptions(endpoint=endpoint))
    result = run_benchmark(config, tokenizer)
    failed = [r.error for r in result.run.records if not r.success]
    if failed:
        raise SystemExit(f"{endpoint}: {len(failed)} requests failed, e.g. {failed[0]}")
    return result
