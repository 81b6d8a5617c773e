"""`splitserve bench` against a real local cluster (router + prefill + decode, tiny model) over
grpc://: the first 20 s of the Azure conv trace, replayed 0.3x as long (6 s) with lengths
clipped to 256 prompt / 32 output tokens, which the tiny model on 2 shared cores serves with
room to spare. Once in-process, once through the CLI as a subprocess; then RAG documents over
gRPC and over the router's OpenAI HTTP API, with the router's API keys on; then the HTTP API
behind a hop that resets each keep-alive connection after two requests."""

import dataclasses
import json
import subprocess
import sys
from urllib.parse import urlsplit

import matplotlib.image
import pytest

from splitserve.bench import report
from splitserve.bench.arrivals import ArrivalConfig, trace_offsets
from splitserve.bench.benchmark import BenchConfig, run_benchmark
from splitserve.bench.plots import save_plots
from splitserve.bench.runner import RunConfig
from splitserve.bench.targets import TargetOptions
from splitserve.bench.workloads import WorkloadConfig, make_workload
from tests.support.cluster import ParallelCluster
from tests.support.cutting_proxy import CuttingProxy
from tests.unit.bench_support import bench_model_dir, bench_tokenizer  # noqa: F401

pytestmark = pytest.mark.slow
WINDOW_S, TIME_SCALE, MAX_IN, MAX_OUT = (0.0, 20.0), 0.3, 256, 32
PNGS = {"ttft_cdf.png", "tpot_cdf.png", "e2el_cdf.png", "throughput.png"}
API_KEY = "bench-key-1"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def cluster(bench_model_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(f"# bench test\n{API_KEY}\n")
    with ParallelCluster(bench_model_dir, prefill=1, decode=1, transport="torch", http_port=-1,
                         router_args=["--api-keys-file", str(keys)]) as c:
        yield c


def _workload() -> WorkloadConfig:
    return WorkloadConfig(name="azure-conv", window_s=WINDOW_S, max_input_len=MAX_IN, max_output_len=MAX_OUT)


def _assert_readable(json_path, plot_dir, num_requests: int) -> dict:
    saved = json.loads(json_path.read_text())
    assert saved["completed"] == num_requests and saved["failed"] == 0 and saved["backend"] == "grpc"
    assert len(saved["requests"]) == num_requests and saved["config"]["workload"]["name"] == "azure-conv"
    assert {p.name for p in plot_dir.iterdir()} >= PNGS
    assert all(matplotlib.image.imread(plot_dir / name).shape[0] > 100 for name in PNGS)
    return saved


def test_azure_conv_replay_in_process(cluster, bench_tokenizer, tmp_path):
    workload = make_workload(_workload(), bench_tokenizer)
    trace = workload.timestamps()
    config = BenchConfig(url=cluster.url, workload=_workload(), arrival=ArrivalConfig(kind="trace", time_scale=TIME_SCALE),
                         run=RunConfig(max_time_s=60), percentiles=(50.0, 99.0),
                         slos_ms={"ttft": 2000.0, "tpot": 200.0}, label="tiny-1p1d", target=TargetOptions(headers=AUTH))
    result = run_benchmark(config, bench_tokenizer, workload)
    errors = [r.error for r in result.run.records if not r.success]
    assert not errors, errors[:5]
    m = result.metrics
    assert m.completed == len(trace) > 20 and m.failed == 0 and m.request_goodput > 0
    assert [r.output_tokens for r in result.run.records] == [r.expected_output_tokens for r in result.run.records]
    assert max(r.prompt_tokens for r in result.run.records) <= MAX_IN
    expected = trace_offsets(config.arrival, trace)
    assert [r.scheduled_s for r in result.run.records] == pytest.approx(expected)
    assert result.run.duration_s >= expected[-1]
    d = report.result_dict(result)
    path = report.save_json(d, tmp_path / "conv.json")
    save_plots([json.loads(path.read_text())], tmp_path / "plots")
    saved = _assert_readable(path, tmp_path / "plots", len(trace))
    assert saved["p99_ttft_ms"] > 0 and saved["mean_tpot_ms"] > 0 and saved["label"] == "tiny-1p1d"


def test_azure_conv_replay_through_the_cli(cluster, bench_model_dir, bench_tokenizer, tmp_path):
    num_requests = len(make_workload(_workload(), bench_tokenizer).timestamps())
    command = [sys.executable, "-m", "splitserve.cli", "bench", "--url", cluster.url, "--tokenizer", str(bench_model_dir),
               "--workload", "azure-conv", "--window", f"{WINDOW_S[0]:g}:{WINDOW_S[1]:g}",
               "--time-scale", str(TIME_SCALE), "--max-input-len", str(MAX_IN), "--max-output-len", str(MAX_OUT),
               "--header", f"Authorization=Bearer {API_KEY}", "--percentiles", "50,99", "--slo", "ttft:2000,tpot:200", "--max-time-s", "60",
               "--json", str(tmp_path / "cli.json"), "--csv", str(tmp_path / "cli.csv"), "--plot", str(tmp_path / "p")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Serving Benchmark Result" in out.stdout and "P99 TTFT (ms):" in out.stdout
    assert "sent" in out.stdout + out.stderr  # plain progress lines when not on a terminal
    saved = _assert_readable(tmp_path / "cli.json", tmp_path / "p", num_requests)
    assert saved["config"]["arrival"]["time_scale"] == TIME_SCALE
    assert len((tmp_path / "cli.csv").read_text().splitlines()) == num_requests + 1


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_rag_documents_and_api_keys(cluster, bench_tokenizer, scheme):
    url = cluster.url if scheme == "grpc" else cluster.http_url
    rag = WorkloadConfig(name="rag", rag_passages=2, output_len=8, seed=3)

    def run(headers):
        config = BenchConfig(url=url, workload=rag, num_requests=6, run=RunConfig(max_concurrency=3, max_time_s=60),
                             target=TargetOptions(headers=headers))
        return run_benchmark(config, bench_tokenizer)

    ok = run(AUTH)
    assert [r.error for r in ok.run.records if not r.success] == []
    assert [r.output_tokens for r in ok.run.records] == [8] * 6
    assert all(r.prompt_tokens > 50 for r in ok.run.records)  # question + 2 passages sent as documents
    denied = run({"Authorization": "Bearer wrong-key"})
    assert denied.metrics.completed == 0 and denied.metrics.failed == 6
    assert all(("UNAUTHENTICATED" if scheme == "grpc" else "HTTP 401") in r.error for r in denied.run.records)


def test_http_requests_on_cut_connections_are_retried_not_failed(cluster, bench_tokenizer):
    with CuttingProxy(urlsplit(cluster.http_url).port, responses_per_connection=2, cut="reset") as proxy:
        config = BenchConfig(url=proxy.url(), workload=WorkloadConfig(input_len=24, output_len=4), num_requests=8,
                             warmup=1, run=RunConfig(max_concurrency=1, max_time_s=60), target=TargetOptions(headers=AUTH))
        result = run_benchmark(config, bench_tokenizer)
    records = result.run.warmup_records + result.run.records
    assert [r.error for r in records if not r.success] == []
    assert [r.output_tokens for r in result.run.records] == [4] * 8
    assert proxy.num_cuts >= 2 and sum(r.retries for r in records) == proxy.num_cuts
    assert report.result_dict(result)["retries"] == sum(r.retries for r in result.run.records) > 0


@pytest.mark.parametrize("endpoint", ["/v1/responses", "/v1/messages"])
def test_the_responses_and_messages_apis_are_benchmarked_like_chat(cluster, bench_tokenizer, endpoint):
    """The same requests through OpenAI's Responses API and Anthropic's Messages API: every output token counted,
    a first-token time and inter-token gaps from their own stream events, the prompt the chat endpoint's."""
    def run(path):
        config = BenchConfig(url=cluster.http_url, workload=WorkloadConfig(input_len=24, output_len=5), num_requests=6,
                             run=RunConfig(max_concurrency=3, max_time_s=60),
                             target=TargetOptions(headers=AUTH, endpoint=path))
        return run_benchmark(config, bench_tokenizer)

    result, chat = run(endpoint), run("/v1/chat/completions")
    assert [r.error for r in result.run.records if not r.success] == []
    assert [r.output_tokens for r in result.run.records] == [5] * 6
    assert all(len(r.token_times) >= 2 and r.token_times[0] > r.send_time for r in result.run.records)
    assert [r.generated_text for r in result.run.records] == [r.generated_text for r in chat.run.records]
    assert report.result_dict(result)["config"]["target"]["endpoint"] == endpoint


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_embeddings_are_benchmarked_by_their_latency_and_input_tokens(cluster, bench_tokenizer, tmp_path, scheme):
    """`--endpoint /v1/embeddings`: each prompt embedded by the cluster (gRPC `Embed`, or OpenAI HTTP), one answer a
    request: E2EL is the latency, nothing is generated, the token throughput is the inputs embedded per second."""
    url = cluster.url if scheme == "grpc" else cluster.http_url
    config = BenchConfig(url=url, workload=WorkloadConfig(input_len=40), num_requests=8, warmup=1,
                         run=RunConfig(max_concurrency=4, max_time_s=60), percentiles=(50.0, 99.0),
                         slos_ms={"e2el": 30000.0}, target=TargetOptions(headers=AUTH, endpoint="/v1/embeddings"))
    result = run_benchmark(config, bench_tokenizer)
    records = result.run.records
    assert [r.error for r in records if not r.success] == []
    assert all(r.pooled and len(r.token_times) == 1 and r.token_times[0] > r.send_time for r in records)
    m = result.metrics
    assert (m.completed, m.total_output, m.output_throughput, m.max_output_tokens_per_s) == (8, 0, 0.0, 0.0)
    assert m.total_input == 8 * 40 and m.total_token_throughput == pytest.approx(m.total_input / m.duration_s)
    assert m.stats["e2el"].median_ms > 0 and m.stats["tpot"].mean_ms == 0 and m.stats["itl"].mean_ms == 0
    assert m.request_goodput == pytest.approx(m.request_throughput)
    d = report.result_dict(result)
    assert d["embeddings"] is True and d["total_output_tokens"] == 0
    table = report.format_table(d)
    assert "P99 E2EL (ms):" in table and "TPOT" not in table and "Output token throughput" not in table
    pngs = save_plots([json.loads(report.save_json(d, tmp_path / "e.json").read_text())], tmp_path / "plots")
    assert {p.name for p in pngs} == {"e2el_cdf.png", "throughput.png"}
    denied = run_benchmark(dataclasses.replace(config, target=TargetOptions(endpoint="/v1/embeddings"), warmup=0),
                           bench_tokenizer)
    assert denied.metrics.completed == 0
    assert all(("UNAUTHENTICATED" if scheme == "grpc" else "HTTP 401") in r.error for r in denied.run.records)
