"""OpenAI's Files and Batch APIs against a real local cluster (router + prefill + decode, tiny model), with
the official `openai` client: upload a JSONL file, create a batch, poll it, download its output and
error files. The reference is the same requests sent one by one to the same cluster: greedy chat
answers and embeddings come out equal. The router runs with two API keys (each sees only its own
files and batches), a queue of 2 requests against a batch concurrency of 4 (lines refused with 429
are sent again, never failed), and 1 MiB of file storage (a bigger upload is a 413)."""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest

from tests.support.cluster import ParallelCluster
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
KEYS = ("batch-key-a", "batch-key-b")
STORAGE = 1 << 20
LINES = "splitserve_router_batch_lines_total"
QUESTIONS = ["Where does the river start?", "Name a sea.", "Who built the bridge?"]


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text("\n".join(KEYS) + "\n")
    args = ["--api-keys-file", str(keys), "--max-queue", "2", "--retry-after-s", "0.2", "--batch-concurrency", "4",
            "--batch-storage-bytes", str(STORAGE)]
    with ParallelCluster(tiny_model, prefill=1, decode=1, http_port=-1, router_args=args) as cluster:
        yield cluster


def client(cluster, key: str = KEYS[0]) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.http_url + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def api(cluster):
    with client(cluster) as c:
        yield c


def jsonl(lines: list[dict]) -> io.BytesIO:
    data = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    data.name = "requests.jsonl"
    return data


def chat_line(custom_id: str, question: str, **body) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": 8,
            "temperature": 0} | body
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def finished(api: openai.OpenAI, batch_id: str, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = api.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s} s")


def rows(api: openai.OpenAI, file_id: str) -> dict[str, dict]:
    return {row["custom_id"]: row for row in map(json.loads, api.files.content(file_id).text.splitlines())}


def test_a_chat_batch_answers_as_the_same_requests_sent_one_by_one(api, cluster):
    before = scrape(cluster.http_url + "/metrics")
    refused_before = value(before, "splitserve_router_http_requests_total", status="429")
    lines = [chat_line(f"q{i}", q) for i, q in enumerate(QUESTIONS)]
    lines.append(chat_line("wrong-model", "Hello?", model="no-such-model"))
    uploaded = api.files.create(file=jsonl(lines), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0 and uploaded.filename == "requests.jsonl"
    batch = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"job": "nightly"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"job": "nightly"}
    batch = finished(api, batch.id)
    assert batch.status == "completed" and batch.completed_at >= batch.in_progress_at >= batch.created_at
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (4, 3, 1)
    after = scrape(cluster.http_url + "/metrics")
    refused = value(after, "splitserve_router_http_requests_total", status="429")
    assert refused > refused_before  # 4 lines at once against a queue of 2: some waited and were sent again
    grown = lambda o: value(after, LINES, outcome=o) - value(before, LINES, outcome=o)  # noqa: E731
    assert {o: grown(o) for o in ("completed", "failed", "not_sent")} == {"completed": 3, "failed": 1, "not_sent": 0}
    assert value(after, "splitserve_router_batches_running") == 0
    output, errors = rows(api, batch.output_file_id), rows(api, batch.error_file_id)
    assert list(output) == ["q0", "q1", "q2"] and list(errors) == ["wrong-model"]
    for i, question in enumerate(QUESTIONS):
        direct = api.chat.completions.create(**chat_line("", question)["body"])
        response = output[f"q{i}"]["response"]
        assert response["status_code"] == 200 and response["request_id"] == output[f"q{i}"]["id"]
        assert response["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
        assert response["body"]["usage"] == direct.usage.model_dump(exclude_none=True) | response["body"]["usage"]
    refused = errors["wrong-model"]["response"]
    assert refused["status_code"] == 404 and refused["body"]["error"]["code"] == "model_not_found"
    assert api.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_an_embeddings_batch_equals_direct_calls(api):
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": MODEL, "input": q, "encoding_format": "float"}} for i, q in enumerate(QUESTIONS)]
    batch = api.batches.create(input_file_id=api.files.create(file=jsonl(lines), purpose="batch").id,
                               endpoint="/v1/embeddings", completion_window="24h")
    batch = finished(api, batch.id)
    assert batch.status == "completed" and batch.error_file_id is None
    output = rows(api, batch.output_file_id)
    for i, question in enumerate(QUESTIONS):
        direct = api.embeddings.create(model=MODEL, input=question, encoding_format="float").data[0].embedding
        assert output[f"e{i}"]["response"]["body"]["data"][0]["embedding"] == pytest.approx(direct, abs=1e-6)


def test_a_file_with_bad_lines_fails_the_batch_naming_each(api):
    good = chat_line("ok", "Hi")
    lines = [good, {**good, "custom_id": "ok"}, {**chat_line("x", "Hi"), "url": "/v1/completions"},
             {**chat_line("s", "Hi", stream=True)}]
    data = jsonl(lines)
    data = io.BytesIO(data.getvalue() + b"not json\n")
    data.name = "bad.jsonl"
    batch = api.batches.create(input_file_id=api.files.create(file=data, purpose="batch").id,
                               endpoint="/v1/chat/completions", completion_window="24h")
    batch = finished(api, batch.id)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert [(e.line, e.param) for e in batch.errors.data] == [(2, "custom_id"), (3, "url"), (4, "body.stream"),
                                                              (5, None)]


def test_create_refuses_what_it_cannot_run(api, cluster):
    file_id = api.files.create(file=jsonl([chat_line("a", "Hi")]), purpose="batch").id
    for kwargs, param in [(dict(endpoint="/v1/messages"), "endpoint"), (dict(completion_window="1h"),
                                                                        "completion_window"),
                          (dict(input_file_id="file-nope"), "input_file_id")]:
        args = dict(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h") | kwargs
        with pytest.raises(openai.APIStatusError) as caught:
            api.batches.create(**args)
        assert caught.value.status_code in (400, 404) and caught.value.body["param"] == param
    with pytest.raises(openai.BadRequestError, match="purpose"):
        api.files.create(file=jsonl([chat_line("a", "Hi")]), purpose="fine-tune")
    big = io.BytesIO(b"x" * (STORAGE + 1))
    big.name = "big.jsonl"
    with pytest.raises(openai.APIStatusError) as caught:
        api.files.create(file=big, purpose="batch")
    assert caught.value.status_code == 413
    answer = httpx.post(cluster.http_url + "/v1/files", content=b"{}", headers={
        "Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"})
    assert answer.status_code == 400 and "multipart/form-data" in answer.json()["error"]["message"]


def test_each_key_sees_only_its_own_files_and_batches(api, cluster):
    mine = api.files.create(file=jsonl([chat_line("a", "Hi")]), purpose="batch")
    batch = api.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
    with client(cluster, KEYS[1]) as other:
        for call in (lambda: other.files.retrieve(mine.id), lambda: other.files.content(mine.id),
                     lambda: other.files.delete(mine.id), lambda: other.batches.retrieve(batch.id),
                     lambda: other.batches.cancel(batch.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        assert mine.id not in [f.id for f in other.files.list()]
        assert batch.id not in [b.id for b in other.batches.list()]
    assert mine.id in [f.id for f in api.files.list(purpose="batch")]
    assert batch.id == api.batches.list(limit=1).data[0].id
    finished(api, batch.id)
    assert api.files.delete(mine.id).deleted
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(mine.id)


def test_a_cancelled_batch_stops_and_keeps_what_was_answered(api, cluster):
    # long lines: half a second into the batch only a few can have finished, however fast the machine
    lines = [chat_line(f"c{i}", "Tell a long story.", max_tokens=200, ignore_eos=True) for i in range(24)]
    batch = api.batches.create(input_file_id=api.files.create(file=jsonl(lines), purpose="batch").id,
                               endpoint="/v1/chat/completions", completion_window="24h")
    time.sleep(0.5)
    cancelling = api.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = finished(api, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    counts = batch.request_counts
    assert counts.total == 24 and counts.completed + counts.failed == 24 and counts.completed < 24
    errors = rows(api, batch.error_file_id)
    assert sum(row["error"] is not None and row["error"]["code"] == "batch_cancelled" for row in errors.values()) > 10
    with pytest.raises(openai.APIStatusError) as caught:
        api.batches.cancel(batch.id)
    assert caught.value.status_code == 409
    assert httpx.get(cluster.http_url + "/health").json()["requests_in_flight"] == 0
