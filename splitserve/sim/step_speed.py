"""How fast a node's logged steps ran against a profile's step model (`splitserve node --step-log`).

A step's speed is its measured seconds over the step model's prediction for its shape (the same
terms `splitserve profile` fits). Steps with prompt tokens and decode-only steps are kept apart,
as the simulator's per-kind speed factors are; so are steps that ran alone on the host and steps
that overlapped another node's step most of their time (the simulator stretches those itself, by
the profile's co-run stretch). A loaded run's own speed when alone predicts it with the machine's
speed drift taken out, which leaves the simulator's own error; shared over alone is the co-run
stretch the run really had.
"""

from __future__ import annotations

import bisect
import statistics
from pathlib import Path

from splitserve.runtime.step_log import read_step_log

KINDS = ("prefill", "decode")
ALONE_AT_MOST = 0.05  # a step overlapped by other nodes' steps for at most this part of it ran alone
SHARED_AT_LEAST = 0.5  # ... for at least this part of it ran shared


def predicted_s(step_model, step: dict) -> float:
    """The step model's time for one logged step's shape."""
    prompt, decode = step["prompt"], step["decode"]
    attention = sum(new * (start + new) for start, new in prompt)
    masked = sum(new * (start + new) for start, new in prompt if start)
    tokens = sum(new for _, new in prompt) + len(decode)
    return step_model.seconds(tokens, len(prompt) + len(decode), attention, sum(decode), masked)


def step_kind(step: dict) -> str:
    return "prefill" if step["prompt"] else "decode"


class Intervals:
    """Sorted, merged time intervals (other nodes' steps) and how much of a span they cover."""

    def __init__(self, spans):
        merged: list[list[float]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts, self.ends = [a for a, _ in merged], [b for _, b in merged]

    def covered(self, a: float, b: float) -> float:
        i, total = max(0, bisect.bisect_right(self.starts, a) - 1), 0.0
        while i < len(self.starts) and self.starts[i] < b:
            total += max(0.0, min(b, self.ends[i]) - max(a, self.starts[i]))
            i += 1
        return total


def step_speed(logs: dict[str, list[dict]], step_model, start: float, end: float) -> dict:
    """Over the steps (of every node: name -> its logged steps) that started in [start, end], per kind:
    the median measured/predicted of all of them, of those that ran alone, of those that ran shared
    (None where there were none), and their counts."""
    ratios = {kind: {"all": [], "alone": [], "shared": []} for kind in KINDS}
    for node, steps in logs.items():
        others = Intervals((s["t"], s["t"] + s["s"]) for n, other in logs.items() if n != node for s in other)
        for step in steps:
            if not (start <= step["t"] <= end and (step["prompt"] or step["decode"])):
                continue
            ratio, kind = step["s"] / predicted_s(step_model, step), ratios[step_kind(step)]
            kind["all"].append(ratio)
            overlap = others.covered(step["t"], step["t"] + step["s"]) / step["s"] if step["s"] > 0 else 0.0
            if overlap <= ALONE_AT_MOST:
                kind["alone"].append(ratio)
            elif overlap >= SHARED_AT_LEAST:
                kind["shared"].append(ratio)
    out = {}
    for kind, groups in ratios.items():
        out[kind] = statistics.median(groups["all"]) if groups["all"] else None
        for group in ("alone", "shared"):
            out[f"{kind}_{group}"] = statistics.median(groups[group]) if groups[group] else None
    return out | {"steps": {f"{kind}_{group}": len(r) for kind, groups in ratios.items() for group, r in groups.items()}}


def folder_logs(folder: Path) -> dict[str, list[dict]]:
    """Node name (file stem) -> its logged steps, for every log in a folder (`--step-log FOLDER`)."""
    return {path.stem: read_step_log(path) for path in sorted(Path(folder).glob("*.jsonl"))}
