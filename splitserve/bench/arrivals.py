"""When each request is sent: offsets in seconds from the start of the main run.

Rate processes follow `vllm bench serve` (vllm/benchmarks/serve.py: get_request): gaps are
drawn from gamma(shape=burstiness, scale=1/(rate*burstiness)), so the mean gap is 1/rate and
the coefficient of variation is 1/sqrt(burstiness): `poisson` is burstiness 1, `gamma` takes
--burstiness (< 1 burstier, > 1 smoother), `constant` is burstiness inf (gap exactly 1/rate).
The first request also waits one gap. With a request count, the cumulative offsets are
rescaled so the last one is exactly N/rate, as vLLM does to steady throughput across seeds.
An infinite rate sends everything at t=0 (pair it with a concurrency limit: closed loop).

A ramp (vLLM's --ramp-up-strategy) changes the rate from request to request: request i of N is sent
at the rate start + (end - start) * i / (N - 1) (`linear`) or start * (end / start) ** (i / (N - 1))
(`exponential`), its gap drawn as above at that rate; the offsets are not rescaled. One run then
walks the load from light to past capacity, and the report groups requests by the rate they met.

`trace` replays timestamps given by the workload (seconds, sorted): offsets from the first
one, multiplied by `time_scale` (0.5 = twice as fast), or, with a finite `rate`, rescaled so
that the N requests span N/rate seconds (rate scaling; N is the request count when one is
given, else the whole trace). Gaps keep their proportions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

ARRIVAL_KINDS = ("poisson", "gamma", "constant", "trace")
RAMPS = ("linear", "exponential")
_CHUNK = 4096  # gaps drawn at a time in duration mode


@dataclass(frozen=True)
class ArrivalConfig:
    kind: str = "poisson"
    rate: float = math.inf  # requests/s; inf: all at t=0
    burstiness: float = 1.0  # gamma shape; only for kind="gamma"
    seed: int = 0
    time_scale: float = 1.0  # trace only: multiplies the trace's gaps
    normalize: bool = True  # count mode: last offset = N/rate (vLLM)
    ramp: str | None = None  # linear or exponential: the rate goes from `rate` to `ramp_end` over the requests
    ramp_end: float | None = None

    def __post_init__(self):
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(f"arrival kind {self.kind!r}: expected one of {', '.join(ARRIVAL_KINDS)}")
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0 (inf allowed), got {self.rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")
        if self.kind == "poisson" and self.burstiness != 1.0:
            raise ValueError("poisson arrivals have burstiness 1; use kind 'gamma' for another burstiness")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if self.kind == "trace" and self.time_scale != 1.0 and math.isfinite(self.rate):
            raise ValueError("trace arrivals: give either a time scale or a rate, not both")
        if self.kind != "trace" and self.time_scale != 1.0:
            raise ValueError("time_scale applies to trace arrivals only")
        if self.ramp is not None:
            self._check_ramp()

    def _check_ramp(self) -> None:
        if self.ramp not in RAMPS:
            raise ValueError(f"ramp {self.ramp!r}: expected one of {', '.join(RAMPS)}")
        if self.kind == "trace":
            raise ValueError("a ramp sets the rate of generated arrivals, not of a trace")
        if not (math.isfinite(self.rate) and self.ramp_end is not None and math.isfinite(self.ramp_end)
                and self.ramp_end > 0):
            raise ValueError("a ramp needs finite start and end rates > 0 (--ramp-up-start-rps, --ramp-up-end-rps)")

    def rate_of(self, index: int, num_requests: int) -> float:
        """The rate request `index` of `num_requests` is sent at (the configured rate without a ramp)."""
        if self.ramp is None:
            return self.rate
        progress = index / (num_requests - 1) if num_requests > 1 else 0.0
        if self.ramp == "linear":
            return self.rate + (self.ramp_end - self.rate) * progress
        return self.rate * (self.ramp_end / self.rate) ** progress

    @property
    def shape(self) -> float:
        """Gamma shape of the gaps: 1 (poisson), burstiness (gamma), inf (constant)."""
        return {"poisson": 1.0, "gamma": self.burstiness, "constant": math.inf}.get(self.kind, math.nan)


def arrival_offsets(
    config: ArrivalConfig,
    num_requests: int | None = None,
    duration_s: float | None = None,
    trace_s: Sequence[float] | None = None,
) -> Iterator[float]:
    """Send offsets (s, non-decreasing): `num_requests` of them, or all below `duration_s`,
    or, when neither is given, without end (rate processes) / the whole trace."""
    if num_requests is not None and num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    if config.kind == "trace":
        if trace_s is None:
            raise ValueError("trace arrivals need a workload with timestamps (azure-code, azure-conv, mooncake)")
        if num_requests is not None:  # rate scaling applies to the requests sent, not the whole trace
            trace_s = trace_s[:num_requests]
        return iter(_limit(trace_offsets(config, trace_s), num_requests, duration_s))
    if math.isinf(config.rate):
        if duration_s is not None and num_requests is None:
            return _forever(0.0)  # the runner stops at duration_s; needs a concurrency limit
        return iter([0.0] * (num_requests or 0))
    if num_requests is not None:
        return iter(_limit(_counted(config, num_requests), None, duration_s))
    if config.ramp is not None:
        raise ValueError("a ramp needs a request count (--num-requests): its rate moves from request to request")
    return _unbounded(config, duration_s)


def trace_offsets(config: ArrivalConfig, trace_s: Sequence[float]) -> list[float]:
    """Offsets from the first timestamp, time-scaled or rate-scaled (see the module doc)."""
    times = np.asarray(trace_s, dtype=float)
    if times.size == 0:
        return []
    if np.any(np.diff(times) < 0):
        raise ValueError("trace timestamps must be sorted")
    offsets = times - times[0]
    scale = config.time_scale
    if math.isfinite(config.rate) and offsets[-1] > 0:
        scale = (times.size / config.rate) / offsets[-1]
    return (offsets * scale).tolist()


def _gaps(config: ArrivalConfig, rng: np.random.Generator, n: int, rates=None) -> np.ndarray:
    """n gaps at the configured rate, or at `rates` (one per gap)."""
    rates = np.full(n, config.rate) if rates is None else np.asarray(rates, dtype=float)
    if math.isinf(config.shape):
        return 1.0 / rates
    return rng.gamma(shape=config.shape, scale=1.0 / (rates * config.shape), size=n)


def _counted(config: ArrivalConfig, n: int) -> list[float]:
    if n == 0:
        return []
    rates = [config.rate_of(i, n) for i in range(n)] if config.ramp is not None else None
    offsets = np.cumsum(_gaps(config, np.random.default_rng(config.seed), n, rates))
    if config.normalize and config.ramp is None and offsets[-1] > 0:
        offsets *= (n / config.rate) / offsets[-1]
    return offsets.tolist()


def _unbounded(config: ArrivalConfig, duration_s: float | None) -> Iterator[float]:
    rng = np.random.default_rng(config.seed)
    now = 0.0
    while True:
        for gap in _gaps(config, rng, _CHUNK):
            now += float(gap)
            if duration_s is not None and now >= duration_s:
                return
            yield now


def _forever(value: float) -> Iterator[float]:
    while True:
        yield value


def _limit(offsets: list[float], num_requests: int | None, duration_s: float | None) -> list[float]:
    if duration_s is not None:
        offsets = [t for t in offsets if t < duration_s]
    return offsets if num_requests is None else offsets[:num_requests]
