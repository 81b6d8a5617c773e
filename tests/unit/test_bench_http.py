"""HTTP target + runner end to end against a fake OpenAI streaming server on 127.0.0.1."""

import argparse
import asyncio
import csv
import json

import pytest

from splitserve.bench import report
from splitserve.bench.arrivals import ArrivalConfig
from splitserve.bench.benchmark import BenchConfig, run_benchmark
from splitserve.bench.metrics import RequestRecord
from splitserve.bench.plots import save_plots
from splitserve.bench.provenance import model_id
from splitserve.bench.runner import TIME_LIMIT_ERROR, RunConfig, Runner
from splitserve.bench.targets import Target, TargetOptions, make_target, register_target
from splitserve.bench.workloads import BenchRequest, WorkloadConfig
from splitserve.commands import bench as bench_cmd
from tests.unit.bench_support import FakeOpenAIServer, bench_model_dir, bench_tokenizer  # noqa: F401


def _config(url, **kw):
    base = dict(workload=WorkloadConfig(input_len=32, output_len=6), arrival=ArrivalConfig(rate=200.0, seed=1),
                num_requests=20, percentiles=(50.0, 99.0), slos_ms={"ttft": 1000.0, "tpot": 100.0})
    return BenchConfig(url=url, **(base | kw))


def test_end_to_end_outputs_and_failures(bench_tokenizer, tmp_path):
    with FakeOpenAIServer(fail_every=5) as server:
        result = run_benchmark(_config(server.url, warmup=2), bench_tokenizer)
    m = result.metrics
    assert (m.completed, m.failed) == (16, 4)  # POSTs 5, 10, 15, 20 fail (warm-ups are POSTs 1-2)
    assert m.total_output == 16 * 6 and m.total_input == sum(r.prompt_tokens for r in result.run.records if r.success)
    assert 0 < m.stats["ttft"].mean_ms < 1000 and m.request_goodput > 0
    assert len(result.run.warmup_records) == 2 and all(r.success for r in result.run.warmup_records)
    body = server.bodies[-1]
    assert body["model"] == "fake-model" and body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["min_tokens"] == body["max_tokens"] == 6
    failed = [r for r in result.run.records if not r.success]
    assert all("HTTP 500" in r.error for r in failed)

    d = report.result_dict(result)
    table = report.format_table(d)
    assert "Serving Benchmark Result" in table and "P99 TPOT (ms):" in table and "Request goodput" in table
    saved = json.loads(report.save_json(d, tmp_path / "a.json").read_text())
    assert saved["completed"] == 16 and saved["config"]["arrival"]["rate"] == 200.0 and len(saved["requests"]) == 20
    assert saved["config"]["workload"]["input_len"] == 32 and saved["warmup_requests"] == 2
    with open(report.save_csv([d], tmp_path / "a.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and sum(r["success"] == "False" for r in rows) == 4
    pngs = save_plots([saved], tmp_path / "plots")
    import matplotlib.image

    assert {p.name for p in pngs} == {"ttft_cdf.png", "tpot_cdf.png", "e2el_cdf.png", "throughput.png"}
    assert all(matplotlib.image.imread(p).shape[0] > 100 for p in pngs)


def test_lora_modules_name_the_model_of_each_request(bench_tokenizer):
    options = TargetOptions(lora_modules=("sql", "chat", "ahoy"))
    with FakeOpenAIServer() as server:
        result = run_benchmark(_config(server.url, target=options), bench_tokenizer)
    assert result.run.records and all(r.success for r in result.run.records)
    assert {b["model"] for b in server.bodies} == {"sql", "chat", "ahoy"}
    assert result.config["target_info"]["lora_modules"] == ["sql", "chat", "ahoy"]


def test_chat_documents_and_compare(bench_tokenizer, tmp_path):
    rag = WorkloadConfig(name="rag", rag_passages=2, output_len=3)
    with FakeOpenAIServer() as server:
        a = run_benchmark(_config(server.url, workload=rag, num_requests=6,
                                  target=TargetOptions(endpoint="/v1/chat/completions", ignore_eos=False,
                                                       headers={"Authorization": "Bearer s3cret"})),
                          bench_tokenizer)
        docs_body = server.bodies[-1]
        b = run_benchmark(_config(server.url + "/v1/completions", num_requests=6), bench_tokenizer)
    assert a.metrics.completed == 6 and a.metrics.total_output == 18
    assert isinstance(docs_body["documents"], list) and len(docs_body["documents"]) == 2
    assert docs_body["messages"][0]["content"] and "ignore_eos" not in docs_body
    assert server.headers[0]["Authorization"] == "Bearer s3cret"
    assert "s3cret" not in json.dumps(report.result_dict(a)["config"])
    assert a.run.records[0].generated_text == "t0 t1 t2 "
    pa = report.save_json(report.result_dict(a), tmp_path / "a.json")
    pb = report.save_json(report.result_dict(b), tmp_path / "b.json")
    text = report.compare(pa, pb)
    assert "request_throughput" in text and "p99_ttft_ms" in text and "%" in text


def test_cli_sweep_json_csv_plots(bench_model_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    with FakeOpenAIServer() as server:
        args = parser.parse_args([
            "bench", "--url", server.url, "--tokenizer", str(bench_model_dir), "--input-len", "16",
            "--output-len", "4", "--num-requests", "6", "--sweep-rates", "50,100", "--slo", "ttft:500,tpot:50",
            "--percentiles", "50,90,99", "--json", str(tmp_path / "s.json"), "--csv", str(tmp_path / "s.csv"),
            "--plot", str(tmp_path / "p"), "--no-progress"])
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("Serving Benchmark Result") == 2 and "goodput" in out
    runs = report.load_runs(tmp_path / "s.json")
    assert [r["request_rate"] for r in runs] == [50.0, 100.0] and all(r["completed"] == 6 for r in runs)
    assert all(r["tokenizer_id"] == r["config"]["tokenizer"] == model_id(bench_model_dir) for r in runs)
    assert str(bench_model_dir) not in (tmp_path / "s.json").read_text()
    assert (tmp_path / "p" / "goodput_vs_rate.png").stat().st_size > 0
    args = parser.parse_args(["bench", "compare", str(tmp_path / "s.json"), str(tmp_path / "s.json")])
    assert args.func(args) == 0 and "+0.0%" in capsys.readouterr().out
    help_text = parser._subparsers._group_actions[0].choices["bench"].format_help()
    assert "(E2EL - TTFT) / (output tokens - 1)" in help_text


def test_cli_embeddings_sweep(bench_model_dir, tmp_path, capsys):
    """`--endpoint /v1/embeddings`: one input per POST, no stream; an answer without a vector is a failure."""
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    with FakeOpenAIServer(fail_every=4, token_delay_s=0.01) as server:
        args = parser.parse_args([
            "bench", "--url", server.url, "--endpoint", "/v1/embeddings", "--tokenizer", str(bench_model_dir),
            "--input-len", "16", "--num-requests", "4", "--sweep-rates", "50,inf", "--extra-body",
            '{"encoding_format": "float"}', "--json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "p"),
            "--no-progress"])
        assert args.func(args) == 0
    assert server.bodies[0] == {"input": server.bodies[0]["input"], "model": "fake-model", "encoding_format": "float"}
    out = capsys.readouterr()
    assert out.out.count("Mean E2EL (ms):") == 2 and "TTFT" not in out.out and "in tok/s" in out.out
    assert "Error 0: RuntimeError: no embedding in the answer" in out.err
    runs = report.load_runs(tmp_path / "e.json")
    assert [(r["completed"], r["failed"], r["total_input_tokens"]) for r in runs] == [(3, 1, 48)] * 2
    assert all(r["embeddings"] and r["total_output_tokens"] == 0 and r["mean_e2el_ms"] >= 10 for r in runs)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["e2el_cdf.png", "goodput_vs_rate.png",
                                                                 "throughput.png"]


def test_cli_ramp_up_reports_latency_by_offered_load(bench_model_dir, tmp_path, capsys):
    """vLLM's --ramp-up-strategy: the rate climbs from start to end over the requests; the JSON and the table
    group them into steps by the rate they met."""
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    with FakeOpenAIServer() as server:
        args = parser.parse_args([
            "bench", "--url", server.url, "--tokenizer", str(bench_model_dir), "--input-len", "8", "--output-len", "3",
            "--num-requests", "20", "--ramp-up-strategy", "exponential", "--ramp-up-start-rps", "20",
            "--ramp-up-end-rps", "200", "--json", str(tmp_path / "r.json"), "--no-progress"])
        assert args.func(args) == 0
    assert "Ramp: latency by offered load" in capsys.readouterr().out
    [run] = report.load_runs(tmp_path / "r.json")
    offered = [row["offered_rps"] for row in run["ramp"]]
    assert len(offered) == 10 and offered == sorted(offered) and 20 <= offered[0] < offered[-1] <= 200
    assert sum(row["requests"] for row in run["ramp"]) == 20 and all(row["median_ttft_ms"] for row in run["ramp"])
    for bad in (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1"],
                ["--ramp-up-start-rps", "1", "--ramp-up-end-rps", "2"],
                ["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1", "--ramp-up-end-rps", "2",
                 "--request-rate", "3"]):
        args = parser.parse_args(["bench", "--url", "http://127.0.0.1:1", "--num-requests", "4", *bad])
        assert args.func(args) == 2 and "ramp" in capsys.readouterr().err


def test_cli_reports_bad_configs(capsys):
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--url", "http://127.0.0.1:1", "--duration-s", "5"])
    assert args.func(args) == 2 and "concurrency" in capsys.readouterr().err
    args = parser.parse_args(["bench", "--url", "http://127.0.0.1:1/v1/embeddings", "--workload", "rag",
                              "--num-requests", "2"])
    assert args.func(args) == 2 and "--rag-inline" in capsys.readouterr().err


def test_time_limit_fails_requests_in_flight(bench_tokenizer):
    with FakeOpenAIServer() as server:
        result = run_benchmark(_config(server.url + "/slow/v1/completions", num_requests=3,
                                       run=RunConfig(max_time_s=0.5)), bench_tokenizer)
    assert result.run.timed_out and result.metrics.failed == 3 and result.run.duration_s < 5
    assert all(r.error == TIME_LIMIT_ERROR for r in result.run.records)


class _FakeTarget(Target):
    """In-process target: fixed token delays, counts requests in flight."""

    def __init__(self, url, options):
        self.in_flight = self.peak = 0

    async def send(self, request: BenchRequest, record: RequestRecord) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        record.mark_sent()
        for _ in range(request.output_tokens):
            await asyncio.sleep(0.005)
            record.mark_token("x")
        self.in_flight -= 1
        record.finish(request.output_tokens)


def test_registry_and_closed_loop_concurrency():
    register_target("fake", _FakeTarget)
    target = make_target("fake://anything")
    with pytest.raises(KeyError, match="http"):
        make_target("nope://x")
    assert type(make_target("grpc://127.0.0.1:1")).__name__ == "GrpcTarget"  # imported on first use
    schedule = ((0.0, BenchRequest(i, "p", 1, 3)) for i in range(1000))  # endless burst, closed loop

    async def main():
        return await Runner(target, RunConfig(max_concurrency=3, duration_s=0.3)).run(schedule)

    result = asyncio.run(main())
    assert target.peak == 3 and 0.3 <= result.duration_s < 1.0
    assert 10 < len(result.records) < 100 and all(r.success for r in result.records)


def test_progress_in_place_on_a_terminal_plain_otherwise():
    import io

    from splitserve.bench.progress import Progress

    tty, plain = io.StringIO(), io.StringIO()
    for stream, interactive in ((tty, True), (plain, False)):
        p = Progress(stream, interactive=interactive)
        p.on_sent()
        p.on_sent()
        p.on_done(True)
        p.on_done(False)
        p.render()
        p.render(final=True)
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().count("\n") == 1
    assert plain.getvalue().count("\n") == 2 and "\r" not in plain.getvalue()
    assert "sent 2  completed 1  failed 1  rate" in plain.getvalue() and "elapsed" in plain.getvalue()
