"""Fuzzing OpenAI's Files and Batch APIs on the fuzz cluster's router: batch files of hostile lines (the
HTTP fuzzer's bodies of every API, lines that are not JSON or not objects, wrong urls and methods), and
hostile create bodies. A batch always ends: it fails naming bad lines, or completes with every line in
its output or error file, each answer a 200 or a 4xx (never a 5xx); the service stays healthy."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.harness import KEY, assert_healthy, fuzz_settings
from tests.fuzz.test_fuzz_http import assert_answered, bodies, embeddings_bodies, hostile, responses_bodies

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {KEY}"}
FINAL = ("completed", "failed", "cancelled", "expired")


def chat_line(custom_id: str, body: dict) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


bad_lines = st.one_of(st.binary(max_size=30).map(lambda b: b.decode("latin-1")), hostile.map(json.dumps),
                      st.fixed_dictionaries({"custom_id": hostile, "method": st.sampled_from(["POST", "GET", 1]),
                                             "url": st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]),
                                             "body": hostile}).map(json.dumps))
# chat bodies of the HTTP fuzzer (a third of them without stream), and now and then another API's body
chat_bodies = bodies().filter(lambda pb: pb[0] == "/v1/chat/completions").map(lambda pb: pb[1] | {"stream": False})
line_bodies = chat_bodies | embeddings_bodies | responses_bodies


@st.composite
def batch_files(draw) -> bytes:
    lines = [chat_line(f"r{i}", body) for i, body in enumerate(draw(st.lists(line_bodies, min_size=1, max_size=3)))]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(bad_lines))
    return "\n".join(lines).encode()


def upload(client: httpx.Client, data: bytes) -> str:
    answer = client.post("/v1/files", files={"file": ("f.jsonl", data)}, data={"purpose": "batch"})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def run_to_end(client: httpx.Client, batch_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in FINAL:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not end: {batch}")


@pytest.fixture(scope="module")
def client(cluster):
    with httpx.Client(base_url=cluster.http_url, headers=AUTH, timeout=60) as c:
        yield c


@fuzz_settings(max_examples=20)
@given(data=batch_files())
def test_hostile_batch_files_end_with_every_line_accounted_for(client, data):
    file_id = upload(client, data)
    created = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                               "completion_window": "24h"})
    assert created.status_code == 200, created.text
    batch = run_to_end(client, created.json()["id"])
    event(batch["status"])
    if batch["status"] == "failed":
        assert batch["errors"]["data"] and batch["output_file_id"] is None
        return
    assert batch["status"] == "completed"
    counts = batch["request_counts"]
    results = [json.loads(line) for key in ("output_file_id", "error_file_id") if batch[key]
               for line in client.get(f"/v1/files/{batch[key]}/content").text.splitlines()]
    assert counts["total"] == counts["completed"] + counts["failed"] == len(results)
    for result in results:
        response = result["response"]
        assert_answered(response["status_code"], json.dumps(response["body"]).encode())


@fuzz_settings(max_examples=60)
@given(body=st.dictionaries(st.sampled_from(["input_file_id", "endpoint", "completion_window", "metadata", "x"]),
                            hostile | st.sampled_from(["/v1/chat/completions", "24h", "file-x"]), max_size=5))
def test_hostile_create_bodies_are_refused(client, body):
    answer = client.post("/v1/batches", json=body)
    assert answer.status_code in (400, 404), answer.text
    assert_answered(answer.status_code, answer.content)


def test_batch_fuzzing_leaves_the_service_healthy(cluster, client):
    assert client.get("/health").json()["requests_in_flight"] == 0
    assert_healthy(cluster)
