"""The HTTP target against servers that close keep-alive connections unannounced: a request
whose connection closed before any response byte is resent once on a fresh connection and
counted as a retry; a connection lost after response bytes arrived is a failure."""

import asyncio
import json

import aiohttp
import pytest

from splitserve.bench import report
from splitserve.bench.arrivals import ArrivalConfig
from splitserve.bench.benchmark import BenchConfig, run_benchmark
from splitserve.bench.runner import RunConfig
from splitserve.bench.targets import closed_before_response
from splitserve.bench.workloads import WorkloadConfig
from tests.support.cutting_proxy import CuttingProxy
from tests.unit.bench_support import FakeOpenAIServer, bench_model_dir, bench_tokenizer  # noqa: F401


def _run(url, tokenizer, concurrency: int, num_requests: int = 12, warmup: int = 2):
    config = BenchConfig(url=url, workload=WorkloadConfig(input_len=16, output_len=4), arrival=ArrivalConfig(seed=1),
                         run=RunConfig(max_concurrency=concurrency, max_time_s=60), num_requests=num_requests,
                         warmup=warmup)
    return run_benchmark(config, tokenizer)


def _all_records(result):
    return result.run.warmup_records + result.run.records


@pytest.mark.parametrize("responses_per_connection, cut, concurrency",
                         [(3, "close", 1), (1, "close", 1), (3, "reset", 1), (1, "reset", 4)])
def test_every_request_completes_when_the_server_closes_connections(
        bench_tokenizer, tmp_path, responses_per_connection, cut, concurrency):
    with FakeOpenAIServer() as server, CuttingProxy(server.port, responses_per_connection, cut) as proxy:
        result = _run(proxy.url(), bench_tokenizer, concurrency)
    records = _all_records(result)
    assert [r.error for r in records if not r.success] == []
    assert result.metrics.completed == 12 and result.metrics.failed == 0
    assert proxy.num_cuts > 0 and sum(r.retries for r in records) == proxy.num_cuts
    assert max(r.retries for r in records) == 1 and len(server.bodies) == len(records)  # cut requests never arrived
    if concurrency == 1:  # each connection answers N requests, then the N+1-th is cut and resent
        assert proxy.num_cuts == (len(records) + 1) // (responses_per_connection + 1)  # +1: GET /v1/models
    saved = json.loads(report.save_json(report.result_dict(result), tmp_path / "r.json").read_text())
    assert saved["retries"] == sum(r.retries for r in result.run.records) == sum(row["retries"] for row in saved["requests"])
    assert saved["failed"] == 0 and "Retried requests (connection closed):" in report.format_table(saved)


@pytest.mark.parametrize("cut_after_bytes", [5, 300])  # inside the status line; inside the body
def test_a_connection_lost_after_response_bytes_is_a_failure(bench_tokenizer, cut_after_bytes):
    with FakeOpenAIServer() as server, CuttingProxy(server.port, 2, cut_after_bytes=cut_after_bytes) as proxy:
        result = _run(proxy.url(), bench_tokenizer, concurrency=1)
    records = _all_records(result)
    failed = [r for r in records if not r.success]
    assert proxy.num_cuts > 0 and len(failed) == proxy.num_cuts
    assert sum(r.retries for r in records) == 0 and result.metrics.retries == 0
    assert len(server.bodies) == len(records)  # each request reached the server once


def test_a_server_that_refuses_connections_is_not_retried(bench_tokenizer):
    with FakeOpenAIServer() as server:
        port = server.port
    result = _run(f"http://127.0.0.1:{port}", bench_tokenizer, concurrency=1, num_requests=2, warmup=0)
    assert result.metrics.failed == 2 and result.metrics.retries == 0
    assert all("ClientConnectorError" in r.error for r in result.run.records)


def test_which_errors_mean_closed_before_the_response():
    partial = object()  # aiohttp's partly parsed response (a RawResponseMessage) when bytes arrived
    before = [aiohttp.ServerDisconnectedError(), aiohttp.ClientOSError(104, "Connection reset by peer"),
              ConnectionResetError("Cannot write to closing transport")]
    if hasattr(aiohttp, "ClientConnectionResetError"):
        before.append(aiohttp.ClientConnectionResetError("Cannot write to closing transport"))
    after = [aiohttp.ServerDisconnectedError(partial), aiohttp.ClientPayloadError("Response payload is not completed"),
             aiohttp.ClientConnectorError(None, OSError(111, "Connection refused")), asyncio.TimeoutError(),
             ValueError("bad JSON")]
    assert [closed_before_response(e) for e in before] == [True] * len(before)
    assert [closed_before_response(e) for e in after] == [False] * len(after)
