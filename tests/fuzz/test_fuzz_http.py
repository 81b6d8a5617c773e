"""HTTP fuzzing of the router's OpenAI API and Anthropic's Messages API (a real server): JSON bodies with
wrong types and hostile numbers, invalid UTF-8, bodies that are not JSON, thousands of documents, stop
lists of empty strings. Every answer is a 200 or a 4xx with an OpenAI-style error body, never a 5xx; the
service stays healthy. (tests/unit/test_openai_api_models.py fuzzes the pydantic models alone.)"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz import strategies as fs
from tests.fuzz.harness import KEY, assert_healthy, fuzz_settings

pytestmark = pytest.mark.slow
PATHS = ("/v1/completions", "/v1/chat/completions")

numbers = st.one_of(st.integers(-2**70, 2**70), st.floats(),
                    st.sampled_from([0, -1, 2**31, 2**63, 2**64, 1e308, 1e-320]))
wrong_types = st.one_of(st.none(), st.booleans(), fs.text, st.lists(st.integers(), max_size=3),
                        st.dictionaries(fs.text, st.integers(), max_size=2))
hostile = numbers | wrong_types
max_tokens = st.one_of(fs.max_tokens, st.sampled_from([-1, -(2**63), 2**64, 1e30, "many", None, [], {}]))
prompts = st.one_of(fs.text, st.lists(st.integers(-5, 2**40), max_size=5), st.lists(fs.text, max_size=2), numbers,
                    st.just("words " * 3000), wrong_types)
messages = st.one_of(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "robot", 5]),
                                                     "content": fs.text | wrong_types}), max_size=2), wrong_types)
stops = st.one_of(st.lists(st.just(""), min_size=1, max_size=30), st.lists(fs.text, max_size=20), hostile)
documents = st.one_of(fs.documents, st.integers(65, 3000).map(lambda n: ["doc"] * n), hostile)
words = st.text(st.characters(whitelist_categories=("L", "N", "Zs")), min_size=1, max_size=20)
user_messages = st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": words}), min_size=1, max_size=2)
PLAUSIBLE = {
    "prompt": words, "messages": user_messages, "max_tokens": st.integers(1, 6), "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 50), "seed": st.integers(0, 2**32), "n": st.just(1),
    "stop": st.lists(words, max_size=3), "stream": st.booleans(), "logprobs": st.integers(0, 5) | st.booleans(),
    "top_logprobs": st.integers(0, 5), "min_tokens": st.integers(0, 3), "ignore_eos": st.booleans(),
    "priority": st.integers(-3, 3) | st.sampled_from([2**31, -(2**31) - 1, 2**70]),
    "documents": st.lists(words, max_size=3), "presence_penalty": st.just(0), "echo": st.booleans(),
    "logit_bias": st.dictionaries(st.integers(0, 200).map(str), st.floats(-100, 100), max_size=3),
    "stop_token_ids": st.lists(st.integers(0, 200), max_size=2), "best_of": st.integers(0, 4) | st.just(17), "model": st.none(),
    "bad_words": st.lists(words | st.sampled_from(["", " ", "x" * 3000]), max_size=3),
    "allowed_token_ids": st.lists(st.integers(0, 200) | st.sampled_from([-1, 2**32, 10**6]), max_size=4),
    "truncate_prompt_tokens": st.sampled_from([-1, 1, 3, 0, -2, 2**40]),
    "use_beam_search": st.booleans(), "length_penalty": st.floats(allow_nan=True, allow_infinity=True),
    "user": fs.text, "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {
        "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {
            "n": {"type": "integer"}}}}}]),
    "tools": st.just([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}]),
    "tool_choice": st.sampled_from(["none", "required", "auto", {"type": "function", "function": {"name": "f"}}]),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "min_p": st.floats(0, 1),
    "guided_choice": st.lists(fs.text, min_size=1, max_size=3), "guided_regex": st.sampled_from(["[a-z]+", r"\d{1,3}", "(", ""]),
    "structured_outputs": st.sampled_from([{"json_object": True}, {"grammar": 'start: "a" | "b"'}, {"json": {}},
                                           {"regex": "x", "choice": ["y"]}, {}])}
HOSTILE = {"prompt": prompts, "messages": messages, "max_tokens": max_tokens, "stop": stops, "documents": documents}
# the Responses API (/v1/responses): input items of every kind, some malformed
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "input_image", None]),
                                        "text": words | wrong_types}), max_size=2)
items = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "developer", "tool", 5]),
                           "content": words | parts | wrong_types}),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call", "function_call_output", "reasoning",
                                                    "item_reference", 7]),
                           "call_id": fs.text | wrong_types, "name": words | wrong_types,
                           "arguments": fs.text | wrong_types, "output": fs.text | parts | wrong_types}),
    hostile)
RESPONSES_PLAUSIBLE = {
    "input": words | user_messages, "max_output_tokens": st.integers(1, 6), "instructions": words,
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "previous_response_id": fs.text,
    "tools": st.just([{"type": "function", "name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}}}]),
    "tool_choice": st.sampled_from(["none", "required", "auto", {"type": "function", "name": "f"}]),
    "text": st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}}, {"format": {
        "type": "json_schema", "name": "n", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}}]),
    "include": st.just(["message.output_text.logprobs"]), "top_logprobs": st.integers(0, 5), "store": st.booleans(),
    "stream": st.booleans(), "metadata": st.dictionaries(words, words, max_size=3), "seed": st.integers(0, 2**32),
    "truncation": st.sampled_from(["disabled", "auto"]), "background": st.booleans(), "documents": st.lists(words, max_size=3)}
RESPONSES_HOSTILE = {"input": st.one_of(st.lists(items, max_size=3), wrong_types), "max_output_tokens": max_tokens,
                     "tools": st.lists(wrong_types | st.fixed_dictionaries({"type": fs.text, "name": fs.text}),
                                       max_size=2), "documents": documents}


@st.composite
def bodies(draw) -> tuple[str, dict]:
    """A plausible body (values in range, about a third complete) with up to two fields made hostile."""
    path = draw(st.sampled_from(PATHS))
    # max_tokens always: a chat's default would fill the context
    keys = ["prompt" if path == PATHS[0] else "messages", "max_tokens"]
    keys += draw(st.lists(st.sampled_from(sorted(PLAUSIBLE.keys() - {"prompt", "messages", "max_tokens"})), max_size=5,
                          unique=True))
    bad = set(draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)))
    return path, {key: draw(HOSTILE.get(key, hostile) if key in bad else PLAUSIBLE[key]) for key in keys}


blocks = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "thinking", 3]), "text": words | wrong_types}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": fs.text | wrong_types, "name": words | wrong_types,
                           "input": st.dictionaries(words, words, max_size=2) | wrong_types}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": fs.text, "content": words | wrong_types})),
    max_size=3)
MESSAGES_PLAUSIBLE = {
    "messages": user_messages, "max_tokens": st.integers(1, 6), "system": words,
    "stop_sequences": st.lists(words, max_size=2), "stream": st.booleans(),
    "tools": st.just([{"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}}]),
    "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "f"}, {"type": "none"},
                                    {"type": "any", "disable_parallel_tool_use": True}]),
    "output_config": st.sampled_from([{"format": {"type": "json_schema", "schema": {"type": "object"}}}, {}]),
    "temperature": st.floats(0, 1), "top_k": st.integers(0, 50), "metadata": st.just({"user_id": "u"})}
MESSAGES_HOSTILE = {"messages": st.one_of(st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system", 1]), "content": words | blocks | wrong_types}),
    max_size=3), wrong_types), "max_tokens": max_tokens, "system": blocks | wrong_types,
    "output_config": st.dictionaries(fs.text, hostile, max_size=2)}


@st.composite
def api_bodies(draw, required: list[str], plausible: dict, hostile_values: dict) -> dict:
    """A plausible body of another API (the `required` keys and up to five more), up to two fields made hostile."""
    keys = required + draw(st.lists(st.sampled_from(sorted(plausible.keys() - set(required))), max_size=5,
                                    unique=True))
    bad = set(draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)))
    return {key: draw(hostile_values.get(key, hostile) if key in bad else plausible[key]) for key in keys}


EMBEDDINGS_PLAUSIBLE = {
    "input": words | st.lists(words, min_size=1, max_size=3) | st.lists(st.integers(0, 200), min_size=1, max_size=5),
    "encoding_format": st.sampled_from(["float", "base64"]), "dimensions": st.sampled_from([64, 8]),
    "normalize": st.booleans(), "pooling": st.sampled_from(["last", "mean"]), "user": fs.text,
    "truncate_prompt_tokens": st.sampled_from([-1, 1, 3, 0, -2])}
EMBEDDINGS_HOSTILE = {"input": prompts | st.lists(st.lists(st.integers(-5, 2**40), max_size=3), max_size=3)}
messages_bodies = api_bodies(["messages", "max_tokens"], MESSAGES_PLAUSIBLE, MESSAGES_HOSTILE)
embeddings_bodies = api_bodies(["input"], EMBEDDINGS_PLAUSIBLE, EMBEDDINGS_HOSTILE)
texts = words | st.lists(words, min_size=1, max_size=3)
score_bodies = api_bodies(["text_1", "text_2"],
                          {"text_1": texts, "text_2": texts, "truncate_prompt_tokens": st.just(2)},
                          {"text_1": prompts, "text_2": prompts})
rerank_bodies = api_bodies(["query", "documents"], {
    "query": words, "documents": st.lists(words | st.fixed_dictionaries({"text": words}), min_size=1, max_size=3),
    "top_n": st.integers(-1, 4), "return_documents": st.booleans(), "max_tokens_per_doc": st.integers(0, 3)},
    {"documents": st.lists(hostile, max_size=3) | documents})
responses_bodies = api_bodies(["input", "max_output_tokens"], RESPONSES_PLAUSIBLE, RESPONSES_HOSTILE)


bad_utf8_prompt = fs.invalid_utf8.map(lambda b: b'{"prompt": "' + b + b'", "max_tokens": 2}')
raw_bodies = st.one_of(st.binary(max_size=80), bad_utf8_prompt,
                       st.just(b'{"prompt": "x", "max_tokens": 2'), st.just(b"[" * 5000 + b"]" * 5000),
                       st.just(b'{"prompt": "x", "max_tokens": 2, "temperature": NaN}'))


def post(base_url: str, path: str, body: bytes, key: str | None = KEY) -> tuple[int, bytes]:
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def assert_answered(status: int, payload: bytes) -> None:
    """200 with a completion (or an event stream), else a 4xx with an OpenAI-style error."""
    assert status == 200 or 400 <= status < 500, (status, payload[:300])
    if status == 200:
        answers = {"choices", "output", "content", "data", "results"}
        assert payload.startswith((b"data: ", b"event: ")) or json.loads(payload).keys() & answers, \
            payload[:300]
        return
    error = json.loads(payload)["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)


@fuzz_settings(max_examples=300)
@given(request=bodies() | responses_bodies.map(lambda b: ("/v1/responses", b))
       | messages_bodies.map(lambda b: ("/v1/messages", b)) | embeddings_bodies.map(lambda b: ("/v1/embeddings", b))
       | score_bodies.map(lambda b: ("/v1/score", b)) | rerank_bodies.map(lambda b: ("/v2/rerank", b)))
def test_hostile_json_bodies(cluster, request):
    """OpenAI's completions, chat, embeddings and Responses API, Anthropic's Messages API, score and rerank."""
    path, body = request
    status, payload = post(cluster.http_url, path, json.dumps(body).encode())
    event(f"{path} HTTP {status}")
    assert_answered(status, payload)


@fuzz_settings(max_examples=25)
@given(path=st.sampled_from(PATHS + ("/v1/responses", "/v1/messages", "/v1/embeddings")), body=raw_bodies)
def test_bodies_that_are_not_json_or_not_utf8(cluster, path, body):
    status, payload = post(cluster.http_url, path, body)
    assert status == 400, (status, payload[:300])
    assert_answered(status, payload)


@pytest.mark.parametrize("body, message", [
    ({"prompt": "q", "documents": ["doc"] * 3000, "max_tokens": 2}, "at most 64 documents"),
    ({"prompt": "q", "stop": [""] * 1000, "max_tokens": 2}, "stop strings"),
    ({"prompt": "words " * 3000, "max_tokens": 2}, "exceeds the context length"),
    ({"prompt": "", "max_tokens": 2}, "prompt is empty"),
    ({"prompt": [99999999999], "max_tokens": 2}, "prompt token ids must be in"),
    ({"prompt": "q", "max_tokens": 2, "temperature": 1e-40}, None),  # a tiny temperature is greedy, not an error
], ids=["3000-documents", "1000-empty-stops", "longer-than-context", "empty", "token-out-of-vocab", "tiny-temperature"])
def test_known_hostile_bodies(cluster, body, message):
    status, payload = post(cluster.http_url, PATHS[0], json.dumps(body).encode())
    assert_answered(status, payload)
    if message is None:
        assert status == 200
    else:
        assert status == 400 and message in json.loads(payload)["error"]["message"]


def test_http_fuzzing_leaves_the_service_healthy(cluster):
    url = urlsplit(cluster.http_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    assert_answered(*post(cluster.http_url, PATHS[0], json.dumps({"prompt": "hi", "max_tokens": 3}).encode()))
    assert_healthy(cluster)
