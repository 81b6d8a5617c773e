"""Steady load for the chaos suite: `splitserve bench` runs in threads while faults are injected.

Two streams run side by side against the router's gRPC port: Azure conv trace lengths (clipped
to what the tiny model serves on 2 shared cores) with Poisson arrivals, and RAG requests whose
MuSiQue passages travel as `documents` (so the chunk cache and Redis are in play). Every
request is greedy with a forced output length, so an undisturbed run's output is the
single-process engine's, which `classify` compares each request against.
"""

from __future__ import annotations

import threading
from collections import Counter
from itertools import islice
from dataclasses import dataclass, field

from splitserve.bench.arrivals import ArrivalConfig
from splitserve.bench.benchmark import BenchConfig, BenchResult, run_benchmark
from splitserve.bench.metrics import RequestRecord
from splitserve.bench.runner import TIME_LIMIT_ERROR, RunConfig
from splitserve.bench.targets import TargetOptions
from splitserve.bench.workloads import BenchRequest, WorkloadConfig, make_workload
from splitserve.engine import Engine, SamplingParams
from router.front.intake import Frontend

# The codes the README documents for a request a fault could not be hidden from.
DOCUMENTED_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
MAX_IN, MAX_OUT, RAG_IN, RAG_OUT = 256, 32, 600, 16


@dataclass(frozen=True)
class LoadConfig:
    duration_s: float
    conv_rate: float = 3.0  # requests/s
    rag_rate: float = 1.5
    deadline_s: float = 30.0  # each request's gRPC deadline
    grace_s: float = 15.0  # after the last deadline, a request still running counts as hung
    seed: int = 0

    def __post_init__(self):
        if self.duration_s <= 0 or self.deadline_s <= 0:
            raise ValueError("duration_s and deadline_s must be > 0")


def chaos_streams(config: LoadConfig) -> list[tuple[WorkloadConfig, ArrivalConfig]]:
    conv = WorkloadConfig(name="azure-conv", max_input_len=MAX_IN, max_output_len=MAX_OUT, seed=config.seed)
    rag = WorkloadConfig(name="rag", rag_passages=3, max_input_len=RAG_IN, output_len=RAG_OUT, seed=config.seed)
    return [(conv, ArrivalConfig(kind="poisson", rate=config.conv_rate)),
            (rag, ArrivalConfig(kind="poisson", rate=config.rag_rate))]


def trace_replay(rate: float) -> list[tuple[WorkloadConfig, ArrivalConfig]]:
    """The Azure conv trace in order, its gaps rescaled to `rate` requests/s on average."""
    conv = WorkloadConfig(name="azure-conv", max_input_len=MAX_IN, max_output_len=MAX_OUT)
    return [(conv, ArrivalConfig(kind="trace", rate=rate))]


class Load:
    """Streams of requests (chaos_streams(config) unless given), each in its own thread and event loop."""

    def __init__(self, url: str, tokenizer, config: LoadConfig, streams=None):
        self.url, self.tokenizer, self.config = url, tokenizer, config
        self.streams = streams or chaos_streams(config)
        self.results: list[BenchResult] = []
        self.workloads = {w.name: make_workload(w, tokenizer) for w, _ in self.streams}
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self) -> "Load":
        for workload, arrival in self.streams:
            thread = threading.Thread(target=self._run, args=(workload, arrival), daemon=True, name=f"load-{workload.name}")
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, workload: WorkloadConfig, arrival: ArrivalConfig) -> None:
        c = self.config
        bench = BenchConfig(url=self.url, workload=workload, arrival=arrival,
                            run=RunConfig(max_concurrency=16, duration_s=c.duration_s,
                                          max_time_s=c.duration_s + c.deadline_s + c.grace_s),
                            target=TargetOptions(request_timeout_s=c.deadline_s), label=workload.name)
        try:
            self.results.append(run_benchmark(bench, self.tokenizer, self.workloads[workload.name]))
        except BaseException as exc:  # surfaced by join()
            self._errors.append(exc)

    def join(self) -> list[tuple[dict, RequestRecord]]:
        """Waits for every stream; (workload config, record) for every request sent."""
        c = self.config
        for thread in self._threads:
            thread.join(c.duration_s + c.deadline_s + c.grace_s + 60)
            assert not thread.is_alive(), "a load thread outlived its time limit"
        if self._errors:
            raise self._errors[0]
        return [(r.config["workload"], rec) for r in self.results for rec in r.run.records]

    def requests(self, sent: list[tuple[dict, RequestRecord]]) -> list[BenchRequest]:
        """The request behind each sent record (workloads are deterministic: generated again)."""
        table = {}
        for name, workload in self.workloads.items():
            count = 1 + max((rec.request_id for w, rec in sent if w["name"] == name), default=-1)
            table.update({(name, r.request_id): r for r in islice(workload.requests(), count)})
        return [table[(w["name"], rec.request_id)] for w, rec in sent]


@dataclass
class Tally:
    """What happened to the requests of one fault kind (reliability.json's fields)."""

    requests_sent: int = 0
    completed_exactly: int = 0
    failed_documented: Counter = field(default_factory=Counter)  # by status code
    hung: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"requests_sent": self.requests_sent, "completed_exactly": self.completed_exactly,
                "failed_with_documented_error": sum(self.failed_documented.values()),
                "failed_by_code": dict(sorted(self.failed_documented.items())), "hung": self.hung, "lost": self.lost,
                "lost_examples": self.lost_examples}


class References:
    """Each request's undisturbed output: the single-process engine on the router's prompt ids."""

    def __init__(self, model_dir):
        self.engine, self.frontend = Engine(model_dir), Frontend.from_model_dir(model_dir)

    def outputs(self, requests: list[BenchRequest]) -> list[list[int]]:
        prompts, params = [], []
        for request in requests:
            ids, _ = self.frontend.prompt_and_chunks(prompt=request.prompt, documents=list(request.documents or ()))
            prompts.append(ids)
            params.append(SamplingParams(max_tokens=request.output_tokens, ignore_eos=True))
        return [out.token_ids for out in self.engine.generate(prompts, params)] if prompts else []


def classify(records: list[RequestRecord], expected: list[list[int]], deadline_s: float,
             late_s: float = 5.0) -> Tally:
    """A request that ended more than late_s after its deadline, or never, hung."""
    tally = Tally(requests_sent=len(records))
    for record, want in zip(records, expected):
        code = record.error.split(":", 1)[0]
        took = record.end_time - record.send_time if record.end_time and record.send_time else 0.0
        if record.error == TIME_LIMIT_ERROR or took > deadline_s + late_s:
            tally.hung += 1
        elif record.success and record.token_ids == want:
            tally.completed_exactly += 1
        elif not record.success and code in DOCUMENTED_CODES:
            tally.failed_documented[code] += 1
        else:
            tally.lost += 1
            got = record.token_ids if record.success else record.error
            tally.lost_examples.append(f"request {record.request_id}: got {str(got)[:160]}, expected {want[:12]}...")
    return tally
