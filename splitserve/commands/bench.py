"""`splitserve bench`: load-test any OpenAI-compatible server (or the cluster), vLLM-style.

Metrics follow `vllm bench serve` (vllm/benchmarks/serve.py), measured on the client:
  TTFT  first streamed chunk carrying output - send time
  ITL   gap between consecutive chunks, pooled over all requests (one sample per chunk)
  TPOT  (E2EL - TTFT) / (output tokens - 1), only for outputs of more than one token
        (vLLM's TPOT = GenAI-Perf's "inter token latency" = guidellm's ITL; not guidellm's TPOT)
  E2EL  last chunk - send time
Each: mean, median, population std, percentiles (numpy linear interpolation). Failed requests
count only as failed. Throughputs: completed requests, output tokens, prompt+output tokens per
second of benchmark duration (main run start to last return; warm-up excluded). Goodput:
completed requests per second meeting every SLO (ms, value <= SLO; a one-token output has
TPOT 0). Output tokens come from the server's usage (stream_options.include_usage).
Embeddings (--endpoint /v1/embeddings): each answer is one chunk, so E2EL is the latency and
the total token throughput the input tokens embedded per second (vLLM's pooling metrics).
Arrivals: gamma gaps with shape = burstiness and scale = 1/(rate*burstiness) (Poisson at 1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

TRACE_WORKLOADS = ("azure-code", "azure-conv", "mooncake")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="load-test a server with vLLM's metric conventions",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sub = parser.add_subparsers(dest="bench_command", metavar="{compare}")
    cmp = sub.add_parser("compare", help="compare two result JSON files (B relative to A)")
    cmp.add_argument("a", metavar="A.json")
    cmp.add_argument("b", metavar="B.json")
    parser.set_defaults(func=handle)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from splitserve.bench.workloads import WORKLOADS

    g = p.add_argument_group("target")
    g.add_argument("--url", help="http://HOST:PORT (OpenAI-compatible server), grpc://HOST:PORT (the cluster's router)")
    g.add_argument("--model", help="model name to send (default: the server's first /v1/models entry)")
    g.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME",
                   help="vLLM bench's: each request names one of these LoRA adapters as its model (a seeded random "
                        "pick per request; on grpc:// the request's adapter)")
    g.add_argument("--endpoint", default="/v1/completions", help="/v1/completions, /v1/chat/completions, "
                   "/v1/responses (OpenAI's Responses API), /v1/messages (Anthropic's Messages API) or "
                   "/v1/embeddings (one input a request; on grpc:// the router's Embed)")
    g.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="do not force the output length (ignore_eos, min_tokens)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--extra-body", type=json.loads, default={}, help="JSON merged into each request body")
    g.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                   help="HTTP header for every request (repeatable; values are not saved); "
                        "grpc: Authorization='Bearer KEY' is the API key")
    g.add_argument("--request-timeout-s", type=float, default=600.0)
    g = p.add_argument_group("workload")
    g.add_argument("--workload", default="fixed", choices=list(WORKLOADS))
    g.add_argument("--input-len", type=int, default=1024, help="fixed: prompt tokens")
    g.add_argument("--output-len", type=int, default=128, help="fixed, rag: output tokens")
    g.add_argument("--tokenizer", metavar="MODEL_DIR", help="served model folder (tokenizer.json), for prompts")
    g.add_argument("--trace-file", help="mooncake: the .jsonl trace; others: replaces the default data file")
    g.add_argument("--window", help="trace workloads: START:END seconds from the trace's first request")
    g.add_argument("--max-input-len", type=int, help="clip sampled / trace prompt lengths (rag: each passage to "
                   "max-input-len / rag-passages tokens)")
    g.add_argument("--max-output-len", type=int, help="clip output lengths (sampled, trace, --output-len)")
    g.add_argument("--rag-passages", type=int, default=5, help="rag: passages per request (k)")
    g.add_argument("--rag-zipf", type=float, default=1.0, help="rag: Zipf exponent of passage-set popularity")
    g.add_argument("--rag-inline", action="store_true", help="rag: passages in the prompt, not in `documents`")
    g = p.add_argument_group("load")
    g.add_argument("--request-rate", type=float, default=math.inf,
                   help="req/s (default inf: all at once); with --arrival trace: rescale the trace to this rate")
    g.add_argument("--concurrency", type=int, help="most requests in flight (closed loop with no rate)")
    g.add_argument("--arrival", choices=("poisson", "gamma", "constant", "trace"),
                   help="default: trace for azure-*/mooncake, gamma if --burstiness != 1, else poisson")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape: CV = 1/sqrt(B)")
    g.add_argument("--num-requests", type=int)
    g.add_argument("--duration-s", type=float, help="stop sending after S seconds")
    g.add_argument("--max-time-s", type=float, default=3600.0, help="hard limit; requests still running fail")
    g.add_argument("--warmup", type=int, default=0, help="requests sent first and left out of the metrics")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--time-scale", type=float, default=1.0, help="trace: multiply gaps (0.5 = twice as fast)")
    g.add_argument("--sweep-rates", help="comma list of rates: one run each, for a goodput curve")
    g.add_argument("--ramp-up-strategy", choices=("linear", "exponential"),
                   help="vLLM's: the rate moves from --ramp-up-start-rps to --ramp-up-end-rps over --num-requests; "
                   "the report groups requests by the rate they met")
    g.add_argument("--ramp-up-start-rps", type=float, help="the ramp's first rate (req/s)")
    g.add_argument("--ramp-up-end-rps", type=float, help="the ramp's last rate (req/s)")
    g = p.add_argument_group("output")
    g.add_argument("--slo", help="goodput SLOs in ms, e.g. ttft:500,tpot:50 (names: ttft, tpot, e2el)")
    g.add_argument("--percentiles", default="99", help="comma list, e.g. 50,90,99 (vLLM default 99)")
    g.add_argument("--json", metavar="FILE", help="results with the full configuration and per-request data")
    g.add_argument("--csv", metavar="FILE", help="one row per request")
    g.add_argument("--plot", metavar="DIR", help="PNGs: TTFT/TPOT/E2EL CDFs, throughput over time")
    g.add_argument("--label")
    g.add_argument("--no-progress", action="store_true")


def _window(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    start, sep, end = text.partition(":")
    if not sep:
        raise ValueError(f"--window {text!r}: expected START:END in seconds")
    return float(start or 0), float(end) if end else math.inf


def _headers(pairs: list[str]) -> dict:
    headers = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--header {pair!r}: expected KEY=VALUE")
        headers[key] = value
    return headers


def _rates(args: argparse.Namespace) -> dict:
    """ArrivalConfig's rate keywords: a fixed --request-rate, or vLLM's ramp-up flags."""
    ramp = (args.ramp_up_start_rps, args.ramp_up_end_rps)
    if args.ramp_up_strategy is None:
        if ramp != (None, None):
            raise ValueError("--ramp-up-start-rps and --ramp-up-end-rps go with --ramp-up-strategy")
        return {"rate": args.request_rate}
    if None in ramp or math.isfinite(args.request_rate) or args.sweep_rates:
        raise ValueError("--ramp-up-strategy takes --ramp-up-start-rps and --ramp-up-end-rps, instead of "
                         "--request-rate or --sweep-rates")
    return {"rate": ramp[0], "ramp": args.ramp_up_strategy, "ramp_end": ramp[1]}


def build_config(args: argparse.Namespace):
    """Parsed flags -> BenchConfig (ValueError on a bad combination)."""
    from splitserve.bench.arrivals import ArrivalConfig
    from splitserve.bench.benchmark import BenchConfig
    from splitserve.bench.metrics import parse_percentiles, parse_slos
    from splitserve.bench.runner import RunConfig
    from splitserve.bench.targets import TargetOptions
    from splitserve.bench.workloads import WorkloadConfig

    if not args.url:
        raise ValueError("--url is required")
    kind = args.arrival or ("trace" if args.workload in TRACE_WORKLOADS else
                            "gamma" if args.burstiness != 1.0 else "poisson")
    workload = WorkloadConfig(
        name=args.workload, input_len=args.input_len, output_len=args.output_len, seed=args.seed,
        trace_file=args.trace_file, window_s=_window(args.window), max_input_len=args.max_input_len,
        max_output_len=args.max_output_len, rag_passages=args.rag_passages, rag_zipf=args.rag_zipf,
        rag_inline=args.rag_inline)
    arrival = ArrivalConfig(kind=kind, burstiness=args.burstiness, seed=args.seed, time_scale=args.time_scale,
                            **_rates(args))
    run = RunConfig(max_concurrency=args.concurrency, duration_s=args.duration_s, max_time_s=args.max_time_s)
    target = TargetOptions(model=args.model, endpoint=args.endpoint, ignore_eos=args.ignore_eos,
                           temperature=args.temperature, request_timeout_s=args.request_timeout_s,
                           extra_body=args.extra_body, headers=_headers(args.header),
                           lora_modules=tuple(args.lora_modules))
    return BenchConfig(url=args.url, workload=workload, arrival=arrival, run=run, target=target,
                       num_requests=args.num_requests, warmup=args.warmup, tokenizer=args.tokenizer,
                       percentiles=parse_percentiles(args.percentiles), slos_ms=parse_slos(args.slo),
                       label=args.label)


def handle(args: argparse.Namespace) -> int:
    from splitserve.bench import report

    if args.bench_command == "compare":
        print(report.compare(args.a, args.b))
        return 0
    try:
        config = build_config(args)
        runs = _execute(config, args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"splitserve bench: error: {e}", file=sys.stderr)
        return 2
    _save(runs, args)
    return 0 if any(d["completed"] for d in runs) else 1


def _execute(config, args) -> list[dict]:
    from splitserve.bench import report
    from splitserve.bench.benchmark import run_benchmark, sweep
    from splitserve.bench.progress import Progress

    progress = lambda label="": Progress(enabled=not args.no_progress, label=label)  # noqa: E731
    if args.sweep_rates:
        rates = [float(r) for r in args.sweep_rates.split(",") if r]
        runs = [report.result_dict(r) for r in sweep(config, rates, progress_factory=progress)]
    else:
        runs = [report.result_dict(run_benchmark(config, progress=progress()))]
    for d in runs:
        _print_errors(d)
        print(report.format_table(d))
    if len(runs) > 1:
        print(report.sweep_table(runs))
    return runs


def _print_errors(d: dict) -> None:
    errors = [r["error"] for r in d["requests"] if not r["success"]]
    for i, error in enumerate(errors[:10]):
        print(f"Error {i}: {error}", file=sys.stderr)


def _save(runs: list[dict], args) -> None:
    from splitserve.bench import report

    if args.json:
        report.save_json(runs[0] if len(runs) == 1 else {"sweep": runs}, args.json)
    if args.csv:
        report.save_csv(runs, args.csv)
    if args.plot:
        from splitserve.bench.plots import save_plots

        save_plots(runs, args.plot)
