"""Results out: vLLM's result table, JSON (results + full configuration), per-request CSV,
and `compare` of two saved JSON files.

The JSON keeps vLLM's top-level keys (`completed`, `request_throughput`, `mean_ttft_ms`,
`p99_tpot_ms`, ...) so tools reading `vllm bench serve` results read ours; it adds `config`
(everything the run was given) and `requests` (one object per main-run request).
A sweep file is `{"sweep": [result, ...]}`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from splitserve.bench.benchmark import BenchResult
from splitserve.bench.metrics import RequestRecord, output_len, percentile_word, tpot_s
from splitserve.bench.provenance import model_id
from splitserve.bench.ramp import ramp_rows, ramp_table

HEADERS = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
}
CSV_FIELDS = ("request_id", "scheduled_s", "send_s", "success", "error", "retries", "prompt_tokens", "output_tokens",
              "expected_output_tokens", "num_chunks", "ttft_ms", "tpot_ms", "e2el_ms", "mean_itl_ms")


def request_rows(result: BenchResult) -> list[dict]:
    """One dict per main-run request; times relative to the start of the main run."""
    t0 = result.run.start_time
    return [_request_row(r, t0) for r in result.run.records]


def _request_row(r: RequestRecord, t0: float) -> dict:
    row = {"request_id": r.request_id, "scheduled_s": round(r.scheduled_s, 6),
           "send_s": None if r.send_time is None else round(r.send_time - t0, 6),
           "success": r.success, "error": r.error, "retries": r.retries, "prompt_tokens": r.prompt_tokens,
           "output_tokens": None, "expected_output_tokens": r.expected_output_tokens,
           "num_chunks": len(r.token_times), "ttft_ms": None, "tpot_ms": None, "e2el_ms": None,
           "mean_itl_ms": None, "token_times_s": [round(t - t0, 6) for t in r.token_times]}
    if r.success:
        n = output_len(r)
        itls = r.itls_s
        tpot = tpot_s(r, n)
        row.update(output_tokens=n, ttft_ms=r.ttft_s * 1000, e2el_ms=r.e2el_s * 1000,
                   tpot_ms=None if tpot is None else tpot * 1000,
                   mean_itl_ms=sum(itls) / len(itls) * 1000 if itls else None)
    return row


def result_dict(result: BenchResult) -> dict:
    """The run's results and configuration; a tokenizer folder is named by name and content hash."""
    cfg = result.config
    if cfg.get("tokenizer"):
        cfg = {**cfg, "tokenizer": model_id(cfg["tokenizer"])}
    info = cfg.get("target_info", {})
    out = {
        "date": result.run.started_at, "backend": urlsplit(cfg["url"]).scheme, "label": cfg.get("label"),
        "model_id": info.get("model"), "tokenizer_id": cfg.get("tokenizer"),
        "num_prompts": len(result.run.records), "request_rate": cfg["arrival"]["rate"],
        "burstiness": cfg["arrival"]["burstiness"], "max_concurrency": cfg["run"]["max_concurrency"],
        "arrival": cfg["arrival"]["kind"], "workload": cfg["workload"]["name"],
        "percentiles": list(cfg["percentiles"]), "slos_ms": cfg["slos_ms"],
        "warmup_requests": len(result.run.warmup_records),
        "warmup_failed": sum(not r.success for r in result.run.warmup_records),
        "timed_out": result.run.timed_out, "embeddings": bool(cfg.get("embeddings")),
    }
    out.update(result.metrics.to_dict())
    out["config"] = cfg
    out["requests"] = request_rows(result)
    if cfg["arrival"].get("ramp"):
        out["ramp"] = ramp_rows(cfg["arrival"], out["requests"])
    return out


def format_table(d: dict) -> str:
    """The final table, in `vllm bench serve`'s layout (plus Std lines); for embeddings, the lines
    vLLM prints for a pooling run (no generated tokens: inputs and end-to-end latency)."""
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]
    row = lambda label, value: lines.append(f"{label:<40} {value:<10}")  # noqa: E731
    num = lambda label, value: lines.append(f"{label:<40} {value:<10.2f}")  # noqa: E731
    pooling = d.get("embeddings", False)
    row("Successful requests:", d["completed"])
    row("Failed requests:", d["failed"])
    if d.get("retries"):
        row("Retried requests (connection closed):", d["retries"])
    if d.get("max_concurrency") is not None:
        row("Maximum request concurrency:", d["max_concurrency"])
    if _finite(d.get("request_rate")):
        num("Request rate configured (RPS):", float(d["request_rate"]))
    num("Benchmark duration (s):", d["duration"])
    row("Total input tokens:", d["total_input_tokens"])
    if not pooling:
        row("Total generated tokens:", d["total_output_tokens"])
    num("Request throughput (req/s):", d["request_throughput"])
    if d.get("request_goodput") is not None:
        num("Request goodput (req/s):", d["request_goodput"])
    if not pooling:
        num("Output token throughput (tok/s):", d["output_throughput"])
        num("Peak output token throughput (tok/s):", d["max_output_tokens_per_s"])
    num("Peak concurrent requests:", d["max_concurrent_requests"])
    num("Total token throughput (tok/s):", d["total_token_throughput"])
    for name, (short, header) in HEADERS.items():
        if pooling and name != "e2el":
            continue
        lines.append("{s:{c}^{n}}".format(s=header, n=50, c="-"))
        num(f"Mean {short} (ms):", d[f"mean_{name}_ms"])
        num(f"Median {short} (ms):", d[f"median_{name}_ms"])
        num(f"Std {short} (ms):", d[f"std_{name}_ms"])
        for p in d["percentiles"]:
            num(f"P{percentile_word(p)} {short} (ms):", d[f"p{percentile_word(p)}_{name}_ms"])
    if d.get("ramp"):
        lines.append(ramp_table(d["ramp"]))
    lines.append("=" * 50)
    return "\n".join(lines)


def sweep_table(runs: Sequence[dict]) -> str:
    """One line per rate: the goodput curve (for embeddings: input tokens/s and p99 E2EL)."""
    pooling = bool(runs) and runs[0].get("embeddings", False)
    columns = (("in tok/s", "total_token_throughput"), ("p99 E2EL", "p99_e2el_ms")) if pooling else \
        (("tok/s", "output_throughput"), ("p99 TTFT", "p99_ttft_ms"), ("p99 TPOT", "p99_tpot_ms"))
    head = f"{'rate':>8} {'done':>6} {'failed':>6} {'req/s':>8} {'goodput':>8}" + "".join(f" {n:>9}" for n, _ in columns)
    lines = [head]
    for d in runs:
        goodput = d.get("request_goodput")
        lines.append(f"{str(d['request_rate']):>8} {d['completed']:>6} {d['failed']:>6} {d['request_throughput']:>8.2f} "
                     f"{'-' if goodput is None else f'{goodput:.2f}':>8}"
                     + "".join(f" {d.get(key, math.nan):>9.1f}" for _, key in columns))
    return "\n".join(lines)


def save_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def save_csv(runs: Sequence[dict], path: str | Path) -> Path:
    """Per-request CSV; with several runs (a sweep) a leading `request_rate` column tells them apart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = (("request_rate",) if len(runs) > 1 else ()) + CSV_FIELDS
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for d in runs:
            for row in d["requests"]:
                writer.writerow({**row, "request_rate": d["request_rate"]})
    return path


def load_runs(path: str | Path) -> list[dict]:
    data = json.loads(Path(path).read_text())
    return data["sweep"] if "sweep" in data else [data]


def compare(a_path: str | Path, b_path: str | Path) -> str:
    """Side by side: A, B, and B relative to A (runs of sweeps paired in order)."""
    a_runs, b_runs = load_runs(a_path), load_runs(b_path)
    blocks = [_compare_one(a, b, Path(a_path).name, Path(b_path).name) for a, b in zip(a_runs, b_runs)]
    if len(a_runs) != len(b_runs):
        blocks.append(f"(A has {len(a_runs)} runs, B has {len(b_runs)}: compared the first {len(blocks)})")
    return "\n\n".join(blocks)


def _compare_keys(a: dict, b: dict) -> list[str]:
    keys = ["completed", "failed", "duration", "request_throughput", "request_goodput", "output_throughput",
            "total_token_throughput"]
    common = [p for p in a.get("percentiles", []) if p in b.get("percentiles", [])]
    for name in HEADERS:
        keys += [f"mean_{name}_ms", f"median_{name}_ms"] + [f"p{percentile_word(p)}_{name}_ms" for p in common]
    return keys


def _compare_one(a: dict, b: dict, a_name: str, b_name: str) -> str:
    lines = [f"A: {a_name}  rate {a.get('request_rate')}", f"B: {b_name}  rate {b.get('request_rate')}",
             f"{'metric':<28} {'A':>12} {'B':>12} {'B vs A':>9}", "-" * 64]
    for key in _compare_keys(a, b):
        va, vb = a.get(key), b.get(key)
        change = f"{(vb - va) / va * 100:+.1f}%" if _number(va) and _number(vb) and va else "-"
        lines.append(f"{key:<28} {_fmt(va):>12} {_fmt(vb):>12} {change:>9}")
    return "\n".join(lines)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
