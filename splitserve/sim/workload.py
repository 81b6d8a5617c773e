"""Simulated requests from the bench's own workloads and arrival processes (lengths only).

The bench workloads (splitserve/bench/workloads.py) cut prompt text from a token stream; the
simulator needs only the lengths, so it runs the same generators with `LengthSource` in place
of the text source (same seeds, same rows, no tokenizer). Trace workloads (azure-*, mooncake)
replay their rows and timestamps under `--arrival trace`, and are sampled row by row (like
sharegpt) under a rate process, which lets a short trace drive a million requests. RAG needs
a tokenizer to count its passages: the model's, or `ApproxTokenizer` (4 characters a token);
its chunk hits are drawn per passage with probability `chunk_hit_rate`, and a hit passage
costs the CacheBlend recompute fraction of its tokens.
`from_bench_json` replays the requests of a measured `splitserve bench --json` run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from router.cluster.policies import CHUNK_RECOMPUTE_FRACTION
from splitserve.bench import traces
from splitserve.bench.arrivals import ArrivalConfig, arrival_offsets
from splitserve.bench.workloads import (FixedWorkload, RagWorkload, SampledLengthsWorkload, TraceWorkload,
                                        WORKLOADS, WorkloadConfig)
from splitserve.sim.fast_lengths import sampled_lengths
from splitserve.sim.request import SimRequest, gc_paused

TRACE_WORKLOADS = ("azure-code", "azure-conv", "mooncake")


class LengthSource:
    """TextSource's interface, lengths only: a prompt of n tokens is n tokens, no text."""

    def __init__(self, size: int = 1 << 20):
        self.ids = np.zeros(size, dtype=np.int8)

    def prompt(self, num_tokens: int, rng: np.random.Generator) -> tuple[str, int]:
        rng.integers(self.ids.size)  # the draw TextSource makes, so later draws line up
        return "", num_tokens

    def block(self, key: int, num_tokens: int, seed: int = 0) -> str:
        return ""


class ApproxTokenizer:
    """About 4 characters per token (enough to size RAG prompts without a model)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [0] * max(1, math.ceil(len(text) / 4))

    def decode(self, ids: list[int]) -> str:
        return "x" * (4 * len(ids))


@dataclass(frozen=True)
class SimWorkload:
    workload: WorkloadConfig
    arrival: ArrivalConfig
    num_requests: int | None = None
    duration_s: float | None = None
    chunk_hit_rate: float = 0.0  # rag: probability that a passage's chunk-cache is found

    def __post_init__(self):
        if not 0.0 <= self.chunk_hit_rate <= 1.0:
            raise ValueError(f"chunk_hit_rate must be in [0, 1], got {self.chunk_hit_rate}")
        if self.workload.name not in WORKLOADS:
            raise KeyError(f"unknown workload {self.workload.name!r}; known: {', '.join(WORKLOADS)}")
        if self.num_requests is None and self.duration_s is None and self.arrival.kind != "trace":
            raise ValueError("give a request count or a duration")


def _trace_rows(config: WorkloadConfig) -> list[traces.TraceRow]:
    if config.name == "mooncake":
        if not config.trace_file:
            raise ValueError("the mooncake workload needs a trace file (--trace-file PATH.jsonl)")
        return traces.load_mooncake(traces.data_file("", config.trace_file))
    return traces.load_azure(traces.data_file(traces.AZURE_FILES[config.name], config.trace_file))


def _source_workload(spec: SimWorkload, tokenizer):
    config, source = spec.workload, LengthSource()
    if config.name == "fixed":
        return FixedWorkload(config, source), None
    if config.name in ("sharegpt", "arxiv"):
        rows = traces.load_lengths(traces.data_file(traces.LENGTH_FILES[config.name], config.trace_file))
        return SampledLengthsWorkload(config, source, rows), None
    if config.name == "rag":
        items = traces.load_musique(traces.data_file(traces.MUSIQUE_FILE, config.trace_file))
        return RagWorkload(config, tokenizer or ApproxTokenizer(), items), None
    rows = _trace_rows(config)
    if spec.arrival.kind == "trace":
        workload = TraceWorkload(config, source, rows)
        return workload, workload.rows
    return SampledLengthsWorkload(config, source, rows), None


def make_requests(spec: SimWorkload, tokenizer=None) -> list[SimRequest]:
    workload, rows = _source_workload(spec, tokenizer)
    trace = workload.timestamps() if spec.arrival.kind == "trace" else None
    offsets = list(arrival_offsets(spec.arrival, spec.num_requests, spec.duration_s, trace))
    if isinstance(workload, SampledLengthsWorkload):
        lengths = sampled_lengths(spec.workload, workload.rows, len(offsets))
        if lengths is not None:
            with gc_paused():
                return [SimRequest(i, p, o, t) for i, (t, p, o) in enumerate(zip(offsets, *lengths))]
    rng = np.random.default_rng(spec.workload.seed + 7)
    requests = []
    for i, (t, br) in enumerate(zip(offsets, islice(workload.requests(), len(offsets)))):
        hash_ids = rows[i].hash_ids if rows is not None else ()
        requests.append(SimRequest(i, br.prompt_tokens, br.output_tokens, t, _chunk_hit_tokens(spec, br, rng), hash_ids))
    return requests


def _chunk_hit_tokens(spec: SimWorkload, br, rng: np.random.Generator) -> int:
    """Prompt tokens a RAG request does not compute: its hit passages less the recompute share."""
    if not br.documents or spec.chunk_hit_rate == 0.0:
        return 0
    k = len(br.documents)
    chunk_tokens = br.prompt_tokens * k / (k + 1)  # as router/cluster/policies.cached_tokens estimates them
    hits = rng.binomial(k, spec.chunk_hit_rate)
    return int(hits / k * chunk_tokens * (1 - CHUNK_RECOMPUTE_FRACTION))


def from_bench_json(path: str | Path, run_index: int = 0) -> tuple[list[SimRequest], dict]:
    """The requests of a measured run (prompt and output lengths, send times): (requests, run)."""
    data = json.loads(Path(path).read_text())
    run = data["sweep"][run_index] if "sweep" in data else data
    if not run.get("requests"):
        raise ValueError(f"{path}: no per-request rows to replay (save the bench run with --json)")
    return from_bench_run(run), run


def from_bench_run(run: dict) -> list[SimRequest]:
    """A bench result's requests at their send times (s from the run's start)."""
    requests = []
    for i, row in enumerate(sorted(run["requests"], key=lambda r: r.get("send_s") or r["scheduled_s"])):
        sent = row.get("send_s")
        requests.append(SimRequest(i, int(row["prompt_tokens"]), int(row["expected_output_tokens"]),
                                   float(sent if sent is not None else row["scheduled_s"])))
    return requests
