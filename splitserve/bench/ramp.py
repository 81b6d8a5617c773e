"""A ramp's run read by the load it met: the requests in order, cut into steps, each with the rate its
requests were sent at and the latencies they saw (where TTFT turns up is the server's capacity)."""

from __future__ import annotations

import statistics

from splitserve.bench.arrivals import ArrivalConfig

STEPS = 10


def ramp_rows(arrival: dict, rows: list[dict], steps: int = STEPS) -> list[dict]:
    """Per step of the run's requests (result rows, in send order): offered req/s, requests, failures, median and
    p99 TTFT, median TPOT (ms; None without a success)."""
    config = ArrivalConfig(**arrival)
    n = len(rows)
    out = []
    for k in range(min(steps, n)):
        lo, hi = k * n // steps, (k + 1) * n // steps
        part = rows[lo:hi]
        ttfts = sorted(r["ttft_ms"] for r in part if r["success"] and r["ttft_ms"] is not None)
        tpots = [r["tpot_ms"] for r in part if r["success"] and r["tpot_ms"] is not None]
        out.append({"offered_rps": statistics.fmean(config.rate_of(i, n) for i in range(lo, hi)),
                    "requests": len(part), "failed": sum(not r["success"] for r in part),
                    "median_ttft_ms": statistics.median(ttfts) if ttfts else None,
                    "p99_ttft_ms": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else None,
                    "median_tpot_ms": statistics.median(tpots) if tpots else None})
    return out


def ramp_table(rows: list[dict]) -> str:
    """The steps as lines under the run's table."""
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = ["{s:{c}^{n}}".format(s="Ramp: latency by offered load", n=50, c="-"),
             f"{'req/s':>7} {'reqs':>5} {'fail':>4} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9}"]
    lines += [f"{r['offered_rps']:>7.2f} {r['requests']:>5} {r['failed']:>4} {fmt(r['median_ttft_ms']):>9} "
              f"{fmt(r['p99_ttft_ms']):>9} {fmt(r['median_tpot_ms']):>9}" for r in rows]
    return "\n".join(lines)
