"""`--plot DIR`: PNGs of a run (TTFT, TPOT, E2EL CDFs; throughput over time) and of a sweep
(throughput and goodput against the offered rate). Matplotlib with the Agg backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CDF_METRICS = {"ttft": "TTFT (ms)", "tpot": "TPOT (ms, excl. 1st token)", "e2el": "E2E latency (ms)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plots(runs: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """CDFs and throughput over time for each run (one line per run); a goodput curve for sweeps."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pooling = all(d.get("embeddings") for d in runs)  # embeddings: one answer each, E2EL is all there is
    paths = [_cdf(runs, name, label, out_dir / f"{name}_cdf.png") for name, label in CDF_METRICS.items()
             if name == "e2el" or not pooling]
    paths.append(_throughput(runs, out_dir / "throughput.png"))
    if len(runs) > 1:
        paths.append(_goodput(runs, out_dir / "goodput_vs_rate.png"))
    return paths


def _label(d: dict) -> str:
    return f"rate {d['request_rate']}" if d.get("request_rate") not in (None, "inf") else (d.get("label") or "run")


def _cdf(runs: Sequence[dict], name: str, xlabel: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for d in runs:
        values = np.sort([r[f"{name}_ms"] for r in d["requests"] if r[f"{name}_ms"] is not None])
        if values.size:
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=_label(d))
    ax.set(xlabel=xlabel, ylabel="fraction of requests", title=f"{name.upper()} CDF", ylim=(0, 1.02))
    return _finish(plt, fig, [ax], ax if len(runs) > 1 else None, path)


def throughput_series(d: dict, bucket_s: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bucket start s, output tokens/s, completed requests/s); a request's output tokens are
    spread evenly over its streamed chunks. For embeddings the tokens are the inputs embedded."""
    counted = "prompt_tokens" if d.get("embeddings") else "output_tokens"
    end = max([d["duration"]] + [t for r in d["requests"] for t in r["token_times_s"][-1:]])
    edges = np.arange(0.0, end + bucket_s, bucket_s)
    tokens, done = np.zeros(edges.size), np.zeros(edges.size)
    for r in d["requests"]:
        times = r["token_times_s"]
        if not r["success"] or not times:
            continue
        np.add.at(tokens, (np.asarray(times) // bucket_s).astype(int), (r[counted] or 0) / len(times))
        done[int(times[-1] // bucket_s)] += 1
    return edges, tokens / bucket_s, done / bucket_s


def _throughput(runs: Sequence[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for d in runs:
        t, tokens, done = throughput_series(d)
        top.plot(t, tokens, drawstyle="steps-post", label=_label(d))
        bottom.plot(t, done, drawstyle="steps-post", label=_label(d))
    unit = "input tok/s" if all(d.get("embeddings") for d in runs) else "output tok/s"
    top.set(ylabel=unit, title="Throughput over time (1 s buckets)")
    bottom.set(xlabel="time since start (s)", ylabel="completed req/s")
    return _finish(plt, fig, [top, bottom], top if len(runs) > 1 else None, path)


def _goodput(runs: Sequence[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    rates = [float(d["request_rate"]) for d in runs]
    ax.plot(rates, [d["request_throughput"] for d in runs], marker="o", label="throughput (req/s)")
    if all(d.get("request_goodput") is not None for d in runs):
        ax.plot(rates, [d["request_goodput"] for d in runs], marker="s", label=f"goodput (SLO {runs[0]['slos_ms']})")
    ax.set(xlabel="offered request rate (req/s)", ylabel="req/s", title="Throughput and goodput vs rate")
    return _finish(plt, fig, [ax], ax, path)


def _finish(plt, fig, axes, legend_ax, path: Path) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
    if legend_ax is not None:
        legend_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
