"""The Files and Batch APIs shared by two router replicas through a real redis-server (`--batch-store
redis://...`), with the official `openai` client, tiny model, 1 prefill + 1 decode node: a file uploaded
to one replica makes a batch on the other, which runs it while the first answers for it (status, output
file) and cancels it; the replicas share one storage bound; a batch whose replica crashed mid-run is
resumed by the other once its claim lapses (`--batch-claim-s 2`), without anyone asking about it (the
replicas sweep the unfinished batches), every line answered once in the output."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from router.front.batch_store import REDIS_PREFIX, UNFINISHED
from splitserve.localcluster.procs import stop
from tests.integration.test_openai_batches import finished
from tests.support.cluster import ParallelCluster

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
STORAGE = 64 << 10


@pytest.fixture(scope="module")
def replicas(tiny_model, redis_server):
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    args = ["--batch-store", redis_server.url, "--batch-storage-bytes", str(STORAGE), "--batch-claim-s", "2"]
    with ParallelCluster(tiny_model, prefill=1, decode=1, http_port=-1, router_args=args) as cluster:
        second = cluster.start_router()
        try:
            yield cluster, second
        finally:
            stop([second])


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def jsonl(n: int, max_tokens: int, name: str = "requests.jsonl") -> io.BytesIO:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": MODEL, "prompt": f"Story {i}:", "max_tokens": max_tokens, "ignore_eos": True,
                       "temperature": 0}} for i in range(n)]
    data = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    data.name = name
    return data


def test_a_batch_made_on_one_replica_is_answered_for_by_the_other(replicas):
    cluster, second = replicas
    one, two = client(cluster.http_url), client(second.extra["http"])
    uploaded = one.files.create(file=jsonl(3, 6), purpose="batch")
    assert two.files.retrieve(uploaded.id).bytes == uploaded.bytes
    batch = two.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
    assert one.batches.retrieve(batch.id).status in ("validating", "in_progress")
    done = finished(one, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    rows = [json.loads(line) for line in one.files.content(done.output_file_id).text.splitlines()]
    direct = one.completions.create(model=MODEL, prompt="Story 0:", max_tokens=6, temperature=0)
    assert rows[0]["response"]["body"]["choices"][0]["text"] == direct.choices[0].text
    assert batch.id in [b.id for b in one.batches.list()] and uploaded.id in [f.id for f in two.files.list()]


def test_a_batch_cancelled_through_the_other_replica_stops(replicas):
    cluster, second = replicas
    one, two = client(cluster.http_url), client(second.extra["http"])
    batch = one.batches.create(input_file_id=one.files.create(file=jsonl(40, 64), purpose="batch").id,
                               endpoint="/v1/completions", completion_window="24h")
    time.sleep(0.5)
    assert two.batches.cancel(batch.id).status == "cancelling"
    done = finished(two, batch.id)
    assert done.status == "cancelled" and done.request_counts.completed < 40
    errors = [json.loads(line) for line in two.files.content(done.error_file_id).text.splitlines()]
    assert any(row["error"] and row["error"]["code"] == "batch_cancelled" for row in errors)


def test_the_replicas_share_one_storage_bound(replicas):
    cluster, second = replicas
    one, two = client(cluster.http_url), client(second.extra["http"])
    for f in one.files.list():
        one.files.delete(f.id)
    half = io.BytesIO(b"x" * (STORAGE // 2 + 100))
    half.name = "half.jsonl"
    kept = one.files.create(file=half, purpose="batch")
    with pytest.raises(openai.APIStatusError) as caught:
        half.seek(0)
        two.files.create(file=half, purpose="batch")
    assert caught.value.status_code == 413
    two.files.delete(kept.id)
    half.seek(0)
    assert two.files.create(file=half, purpose="batch").bytes == kept.bytes


def test_a_batch_whose_replica_crashed_is_resumed_by_another(replicas, redis_server):
    """Nobody asks about the batch after the crash: the surviving replica's sweep finds it and finishes it."""
    import redis

    cluster, _ = replicas
    one = client(cluster.http_url)
    doomed = cluster.start_router()
    try:
        with client(doomed.extra["http"]) as runner:
            batch = runner.batches.create(input_file_id=runner.files.create(file=jsonl(16, 300), purpose="batch").id,
                                          endpoint="/v1/completions", completion_window="24h")
            deadline = time.monotonic() + 60
            while one.batches.retrieve(batch.id).request_counts.completed < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
        doomed.proc.kill()  # a crash: no drain, its claim left to lapse
    finally:
        stop([doomed])
    partly = one.batches.retrieve(batch.id)
    assert partly.status == "in_progress" and 1 <= partly.request_counts.completed < 16
    stored = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 120
    while json.loads(stored.get(REDIS_PREFIX + batch.id))["status"] != "completed":
        assert time.monotonic() < deadline, "the batch was not resumed"
        time.sleep(0.2)
    assert not stored.sismember(UNFINISHED, batch.id)
    done = one.batches.retrieve(batch.id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (16, 0)
    rows = [json.loads(line) for line in one.files.content(done.output_file_id).text.splitlines()]
    assert [row["custom_id"] for row in rows] == [f"r{i}" for i in range(16)]
    direct = one.completions.create(model=MODEL, prompt="Story 15:", max_tokens=300, temperature=0, extra_body={
        "ignore_eos": True})
    assert rows[15]["response"]["body"]["choices"][0]["text"] == direct.choices[0].text
