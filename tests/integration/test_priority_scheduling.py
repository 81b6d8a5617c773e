"""Request priorities (vLLM's `priority`: lower runs sooner) through a real cluster: the router and one
colocated node that runs one sequence at a time (`--max-num-seqs 1`), tiny model. Long low-priority work
fills the node; a request of a lower value sent after it preempts it and finishes first, over the OpenAI
API (a Batch API batch, whose lines run at --batch-priority 1, against an ordinary chat request at 0) and
over gRPC (`priority` in SamplingParams). With equal priorities the same request waits its turn."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from splitserve.client import Client
from tests.support.cluster import ParallelCluster

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
LONG = 1200  # output tokens of the low-priority work: 1.5 s or more on one sequence slot


@pytest.fixture(scope="module")
def cluster(tiny_model):
    with ParallelCluster(tiny_model, prefill=0, decode=0, colocated=1, http_port=-1, node_args=["--max-num-seqs", "1"],
                         router_args=["--batch-concurrency", "2"]) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def api(cluster):
    with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def long_batch(api: openai.OpenAI, n: int):
    lines = [{"custom_id": f"long{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "messages": [{"role": "user", "content": "Go on."}], "max_tokens": LONG,
                       "ignore_eos": True, "temperature": 0}} for i in range(n)]
    data = io.BytesIO("\n".join(map(json.dumps, lines)).encode())
    data.name = "long.jsonl"
    return api.batches.create(input_file_id=api.files.create(file=data, purpose="batch").id,
                              endpoint="/v1/chat/completions", completion_window="24h")


def test_an_interactive_request_preempts_a_running_batch(api, cluster):
    batch = long_batch(api, 2)
    deadline = time.monotonic() + 30
    while httpx.get(cluster.http_url + "/health").json()["requests_in_flight"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the first line is decoding in the node's one slot, the second waits behind it
    answer = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                         temperature=0)
    counts = api.batches.retrieve(batch.id).request_counts
    assert answer.choices[0].finish_reason == "length" and counts.completed == 0, counts
    while api.batches.retrieve(batch.id).status != "completed":
        time.sleep(0.2)
    output = api.files.content(api.batches.retrieve(batch.id).output_file_id).text.splitlines()
    assert [json.loads(row)["response"]["body"]["usage"]["completion_tokens"] for row in output] == [LONG, LONG]


@pytest.mark.parametrize("priority, first", [(-1, "short"), (0, "long")])
def test_grpc_priority_decides_who_finishes_first(cluster, priority, first):
    finished, decoding = [], threading.Event()

    def run(name: str, **kwargs) -> int:
        tokens = 0
        with Client(cluster.url, timeout_s=120) as client:
            for event in client.generate(prompt="Once upon a time", temperature=0, ignore_eos=True, **kwargs):
                tokens += len(getattr(event, "token_ids", ()))
                decoding.set()
        finished.append(name)
        return tokens

    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(run, "long", max_tokens=LONG)
        assert decoding.wait(30)  # the long request holds the node's one sequence slot
        short = pool.submit(run, "short", max_tokens=4, priority=priority)
        assert short.result() == 4 and long.result() == LONG
    assert finished[0] == first
