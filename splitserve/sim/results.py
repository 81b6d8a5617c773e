"""A simulated run as `splitserve bench` JSON (splitserve/bench/report.py's keys), so
`splitserve bench compare sim.json measured.json` reads it; plus a `sim` block: per-node
utilisation, queueing and preemptions, and the pools' summaries.

Metrics follow splitserve/bench/metrics.py: TTFT, E2EL from the send time; TPOT =
(E2EL - TTFT) / (n - 1) for n > 1; goodput counts completed requests meeting every SLO (a
one-token output has TPOT 0). ITL is pooled from the engine steps: a step of d seconds that
gave k running requests their next token is k samples of d (weighted percentiles).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from splitserve.bench.metrics import BenchmarkMetrics, Stats
from splitserve.sim.request import SimRequest

MAX_REQUEST_ROWS = 20_000


def request_arrays(requests: Sequence[SimRequest]) -> dict[str, np.ndarray]:
    ok = [r for r in requests if not r.error]
    arrival = np.fromiter((r.arrival_s for r in ok), float, len(ok))
    out = {"arrival": arrival, "ttft": np.fromiter((r.first_token_s for r in ok), float, len(ok)) - arrival,
           "e2el": np.fromiter((r.finish_s for r in ok), float, len(ok)) - arrival,
           "outputs": np.fromiter((r.target for r in ok), float, len(ok)),
           "prompt": np.fromiter((r.prompt_tokens for r in ok), float, len(ok))}
    multi = out["outputs"] > 1
    out["tpot_all"] = np.where(multi, (out["e2el"] - out["ttft"]) / np.maximum(out["outputs"] - 1, 1), 0.0)
    out["tpot"] = out["tpot_all"][multi]
    return out


def weighted_stats(samples: Sequence[tuple[float, int]], percentiles: Sequence[float]) -> Stats:
    if not samples:
        return Stats.of([], percentiles)
    values, weights = np.array(samples, dtype=float).T
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    cum = np.cumsum(weights) / weights.sum()
    mean = float(np.average(values, weights=weights))
    std = float(np.sqrt(np.average((values - mean) ** 2, weights=weights)))
    at = lambda q: float(values[min(np.searchsorted(cum, q / 100), len(values) - 1)]) * 1000  # noqa: E731
    return Stats(mean * 1000, at(50), std * 1000, tuple((float(p), at(p)) for p in percentiles))


def compute_sim_metrics(requests: Sequence[SimRequest], itl: Sequence[tuple[float, int]],
                        percentiles: Sequence[float], slos_ms: dict[str, float]) -> BenchmarkMetrics:
    a = request_arrays(requests)
    ends = [r.finish_s for r in requests if not r.error] or [max((r.arrival_s for r in requests), default=0.0)]
    duration = max(max(ends), 1e-9)
    n_ok = len(a["ttft"])
    goodput = None
    if slos_ms:
        good = np.ones(n_ok, dtype=bool)
        for name, values in (("ttft", a["ttft"]), ("tpot", a["tpot_all"]), ("e2el", a["e2el"])):
            if name in slos_ms:
                good &= values <= slos_ms[name] / 1000
        goodput = float(good.sum()) / duration
    total_in, total_out = int(a["prompt"].sum()), int(a["outputs"].sum())
    stats = {name: Stats.of(a[name], percentiles) for name in ("ttft", "tpot")}
    stats["itl"] = weighted_stats(itl, percentiles)
    stats["e2el"] = Stats.of(a["e2el"], percentiles)
    return BenchmarkMetrics(
        completed=n_ok, failed=len(requests) - n_ok, duration_s=duration, total_input=total_in,
        total_output=total_out, request_throughput=n_ok / duration, request_goodput=goodput,
        output_throughput=total_out / duration, total_token_throughput=(total_in + total_out) / duration,
        max_output_tokens_per_s=peak_tokens_per_s(a), max_concurrent_requests=peak_concurrency(a),
        stats={k: stats[k] for k in ("ttft", "tpot", "itl", "e2el")})


def peak_concurrency(a: dict[str, np.ndarray]) -> int:
    if not len(a["arrival"]):
        return 0
    times = np.concatenate([a["arrival"], a["arrival"] + a["e2el"]])
    deltas = np.concatenate([np.ones(len(a["arrival"])), -np.ones(len(a["arrival"]))])
    order = np.lexsort((deltas, times))  # ties: -1 first (half-open intervals)
    return int(np.cumsum(deltas[order]).max())


def peak_tokens_per_s(a: dict[str, np.ndarray]) -> float:
    """Most output tokens in a 1 s bucket, each request's tokens spread evenly from its first to its last."""
    if not len(a["arrival"]):
        return 0.0
    first, last = a["arrival"] + a["ttft"], a["arrival"] + a["e2el"]
    size = int(np.ceil(last.max())) + 2
    firsts = np.bincount(first.astype(int), minlength=size).astype(float)
    rate = np.where(last > first, (a["outputs"] - 1) / np.maximum(last - first, 1e-9), 0.0)
    diff = np.zeros(size)
    np.add.at(diff, first.astype(int), rate)
    np.add.at(diff, last.astype(int) + 1, -rate)
    return float((firsts + np.cumsum(diff)).max())


def node_rows(nodes, duration_s: float) -> list[dict]:
    return [{"node": n.name, "role": n.role, "utilisation": round(n.busy_s / duration_s, 4), "steps": n.num_steps,
             "preemptions": n.num_preemptions, "max_waiting": n.max_waiting} for n in nodes]


def pool_summary(rows: list[dict]) -> dict:
    pools = {}
    for role in sorted({r["role"] for r in rows}):
        util = np.array([r["utilisation"] for r in rows if r["role"] == role])
        pools[role] = {"nodes": int(util.size), "mean_utilisation": float(util.mean()), "max_utilisation": float(util.max()),
                       "preemptions": sum(r["preemptions"] for r in rows if r["role"] == role),
                       "max_waiting": max(r["max_waiting"] for r in rows if r["role"] == role)}
    return pools


def request_rows(requests: Sequence[SimRequest]) -> list[dict]:
    rows = []
    for r in requests:
        ok = not r.error
        ttft = (r.first_token_s - r.arrival_s) * 1000 if ok else None
        e2el = (r.finish_s - r.arrival_s) * 1000 if ok else None
        tpot = (e2el - ttft) / (r.target - 1) if ok and r.target > 1 else None
        rows.append({"request_id": r.rid, "scheduled_s": round(r.arrival_s, 6), "send_s": round(r.arrival_s, 6),
                     "success": ok, "error": r.error, "prompt_tokens": r.prompt_tokens,
                     "output_tokens": r.target if ok else None, "expected_output_tokens": r.target,
                     "ttft_ms": ttft, "tpot_ms": tpot, "e2el_ms": e2el})
    return rows


def result_dict(requests: Sequence[SimRequest], sim, run: dict, percentiles: Sequence[float],
                slos_ms: dict[str, float], wall_s: float) -> dict:
    """`run`: label, request_rate, burstiness, arrival, workload and the configuration."""
    metrics = compute_sim_metrics(requests, sim.itl, percentiles, slos_ms)
    rows = node_rows(sim.nodes, metrics.duration_s)
    out = {"date": time.strftime("%Y%m%d-%H%M%S"), "backend": "sim", "label": run.get("label"),
           "model_id": run.get("model"), "tokenizer_id": None, "num_prompts": len(requests),
           "request_rate": run.get("request_rate"), "burstiness": run.get("burstiness", 1.0), "max_concurrency": None,
           "arrival": run.get("arrival"), "workload": run.get("workload"), "percentiles": list(percentiles),
           "slos_ms": slos_ms, "warmup_requests": 0, "warmup_failed": 0, "timed_out": False}
    out.update(metrics.to_dict())
    out["config"] = run
    out["sim"] = {"wall_s": round(wall_s, 3), "pools": pool_summary(rows), "nodes": rows,
                  "errors": _error_counts(requests)}
    out["requests"] = request_rows(requests) if len(requests) <= MAX_REQUEST_ROWS else []
    return out


def _error_counts(requests: Sequence[SimRequest]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in requests:
        if r.error:
            key = r.error.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
    return counts
