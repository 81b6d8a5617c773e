"""Sampling every process's resident memory and every node's used KV blocks during a soak."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

from tests.support.cluster import node_stats


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a live process (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class Series:
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, t: float, value: float) -> None:
        self.times.append(t)
        self.values.append(value)

    def median_between(self, start: float, end: float) -> float:
        window = [v for t, v in zip(self.times, self.values) if start <= t < end]
        return statistics.median(window) if window else float("nan")


class Sampler:
    """A thread sampling `processes` ({name: pid}) and `nodes` ({name: address}) every interval_s."""

    def __init__(self, processes: dict[str, int], nodes: dict[str, str], interval_s: float):
        self.processes, self.nodes, self.interval_s = processes, nodes, interval_s
        self.rss = {name: Series() for name in processes}
        self.blocks = {name: Series() for name in nodes}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="soak-sampler")

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            t = time.monotonic() - self.t0
            for name, pid in self.processes.items():
                rss = rss_bytes(pid)
                if rss is not None:
                    self.rss[name].add(t, rss)
            for name, address in self.nodes.items():
                try:
                    self.blocks[name].add(t, node_stats(address).num_used_blocks)
                except Exception:  # noqa: BLE001 - a busy node answers late; the next sample will do
                    pass


def growth(series: Series, warmup_s: float, duration_s: float, window_s: float) -> dict:
    """Median over the window right after warm-up vs the last window of the run."""
    first = series.median_between(warmup_s, warmup_s + window_s)
    last = series.median_between(duration_s - window_s, duration_s)
    return {"after_warmup": first, "at_end": last, "growth_pct": 100.0 * (last - first) / first if first else 0.0}
