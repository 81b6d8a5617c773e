"""The grpc:// target against a fake Router server on 127.0.0.1: what it sends, how it times."""

import asyncio
import time
from concurrent import futures

import grpc
import pytest

from splitserve.api.v1 import common_pb2, router_pb2, router_pb2_grpc
from splitserve.bench.benchmark import BenchConfig, run_benchmark
from splitserve.bench.grpc_target import api_key_from_headers
from splitserve.bench.metrics import RequestRecord
from splitserve.bench.runner import RunConfig
from splitserve.bench.targets import TargetOptions, make_target
from splitserve.bench.workloads import BenchRequest, WorkloadConfig
from tests.unit.bench_support import bench_model_dir, bench_tokenizer  # noqa: F401


class FakeRouter(router_pb2_grpc.RouterServicer):
    """Streams one chunk per token ("t0 ", "t1 ", ...), a text-only flush "!", then the final.

    Prompts steer failures: "fail" -> RESOURCE_EXHAUSTED, "abort" -> finish_reason abort,
    "cut" -> no final message, "hang" -> never answers.
    """

    def __init__(self):
        self.requests: list[router_pb2.GenerateRequest] = []
        self.metadata: list[dict] = []

    def Generate(self, request, context):
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if request.prompt == "fail":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if request.prompt == "hang":
            while context.is_active():  # until the client's deadline cancels the call
                time.sleep(0.01)
            return
        n = request.sampling.max_tokens
        for i in range(n):
            yield router_pb2.GenerateResponse(chunk=router_pb2.GenerateChunk(token_ids=[i], text=f"t{i} "))
        yield router_pb2.GenerateResponse(chunk=router_pb2.GenerateChunk(text="!"))
        if request.prompt == "cut":
            return
        reason = "abort" if request.prompt == "abort" else "length"
        yield router_pb2.GenerateResponse(final=router_pb2.GenerateFinal(
            finish_reason=reason, usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=n)))


@pytest.fixture
def fake_router():
    servicer = FakeRouter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    router_pb2_grpc.add_RouterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.url = f"grpc://127.0.0.1:{port}"
    yield servicer
    server.stop(0)


def _send_all(url: str, requests: list[BenchRequest], options: TargetOptions) -> list[RequestRecord]:
    async def main():
        async with make_target(url, options) as target:
            records = [RequestRecord(r.request_id, r.prompt_tokens, r.output_tokens) for r in requests]
            await asyncio.gather(*(target.send(r, rec) for r, rec in zip(requests, records)))
            return records

    return asyncio.run(main())


def test_options_reach_the_router_and_chunks_are_timed(fake_router):
    options = TargetOptions(temperature=0.7, headers={"authorization": "bearer s3cret"})
    docs = BenchRequest(0, "question?", 9, 4, documents=("passage one", "passage two"))
    plain = BenchRequest(1, "hello", 2, 1)
    rec, one = _send_all(fake_router.url, [docs, plain], options)
    sent = {r.prompt: r for r in fake_router.requests}
    assert list(sent["question?"].documents) == ["passage one", "passage two"] and not sent["hello"].documents
    s = sent["question?"].sampling
    assert (s.max_tokens, s.ignore_eos, s.temperature) == (4, True, pytest.approx(0.7))
    assert all(m["authorization"] == "Bearer s3cret" for m in fake_router.metadata)
    assert rec.success and rec.output_tokens == 4 and len(rec.token_times) == 4  # the "!" flush is not a chunk
    assert rec.generated_text == "t0 t1 t2 t3 !" and rec.send_time < rec.token_times[0]
    assert one.success and one.output_tokens == 1 and len(one.token_times) == 1


def test_lora_modules_spread_requests_over_the_adapters(fake_router):
    """vLLM bench's --lora-modules: each request runs one of them, the same one for its id in every run."""
    requests = [BenchRequest(i, f"p{i}", 2, 1) for i in range(40)]
    _send_all(fake_router.url, requests, TargetOptions(lora_modules=("sql", "chat")))
    picked = {r.prompt: r.sampling.lora for r in fake_router.requests}
    assert set(picked.values()) == {"sql", "chat"}
    assert picked == {f"p{i}": TargetOptions(lora_modules=("sql", "chat")).adapter_for(r)
                      for i, r in enumerate(requests)}
    fake_router.requests.clear()
    _send_all(fake_router.url, requests[:3], TargetOptions())
    assert all(not r.sampling.HasField("lora") for r in fake_router.requests)


def test_failures_are_recorded_not_raised(fake_router):
    reqs = [BenchRequest(i, p, 1, 2) for i, p in enumerate(["fail", "abort", "cut", "ok"])]
    fail, abort, cut, ok = _send_all(fake_router.url, reqs, TargetOptions(ignore_eos=False))
    assert fail.error == "RESOURCE_EXHAUSTED: queue full" and not fail.success
    assert "abort" in abort.error and not abort.success
    assert cut.error == "stream ended without a final message"
    assert ok.success and fake_router.requests[-1].sampling.ignore_eos is False
    assert "authorization" not in fake_router.metadata[-1]
    dead = _send_all("grpc://127.0.0.1:1", [BenchRequest(0, "x", 1, 2)], TargetOptions(request_timeout_s=2))[0]
    assert dead.done and not dead.success and dead.error.split(":")[0] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_request_timeout_is_a_deadline(fake_router):
    rec = _send_all(fake_router.url, [BenchRequest(0, "hang", 1, 2)], TargetOptions(request_timeout_s=0.3))[0]
    assert rec.error.startswith("DEADLINE_EXCEEDED")


def test_api_key_from_headers():
    assert api_key_from_headers({"Authorization": "Bearer k1"}) == "k1"
    assert api_key_from_headers({"AUTHORIZATION": "k2"}) == "k2"
    assert api_key_from_headers({"Authorization": "Bearer "}) is None
    assert api_key_from_headers({"X-Other": "v"}) is None


def test_rag_workload_through_run_benchmark(fake_router, bench_tokenizer):
    config = BenchConfig(url=fake_router.url, workload=WorkloadConfig(name="rag", rag_passages=3, output_len=5),
                         num_requests=6, run=RunConfig(max_concurrency=2), slos_ms={"ttft": 1000.0},
                         target=TargetOptions(headers={"Authorization": "Bearer k"}))
    result = run_benchmark(config, bench_tokenizer)
    assert result.metrics.completed == 6 and result.metrics.total_output == 30
    assert all(len(r.documents) == 3 for r in fake_router.requests)
    assert result.config["target_info"] == {"url": fake_router.url, "protocol": "grpc", "api": "generate",
                                            "ignore_eos": True, "temperature": 0.0, "api_key": True}
    assert result.config["target"]["headers"] == {"Authorization": "<redacted>"}


def test_trace_warmup_uses_other_text_than_the_measured_requests(fake_router, bench_tokenizer):
    from splitserve.bench.arrivals import ArrivalConfig

    workload = WorkloadConfig(name="azure-conv", window_s=(0.0, 10.0), max_input_len=32, max_output_len=2)
    config = BenchConfig(url=fake_router.url, workload=workload, arrival=ArrivalConfig(kind="trace", time_scale=0.01),
                         num_requests=3, warmup=2)
    result = run_benchmark(config, bench_tokenizer)
    warm, main = fake_router.requests[:2], fake_router.requests[2:]
    assert result.metrics.completed == 3 and len(main) == 3
    assert [w.sampling.max_tokens for w in warm] == [m.sampling.max_tokens for m in main[:2]]  # the same rows
    assert {w.prompt for w in warm}.isdisjoint(m.prompt for m in main)  # no prefix-cache head start
