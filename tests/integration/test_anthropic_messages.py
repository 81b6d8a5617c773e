"""Anthropic's Messages API (`/v1/messages`) with the official `anthropic` client against a real local
cluster (router + prefill + decode on the tiny model). The reference is the chat completions
endpoint: the same request in chat's words gives the same text, stop, tool calls and token
counts, whole and streamed (the client's own stream accumulator rebuilds the message)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.support.cluster import ParallelCluster
from tests.support.metrics import scrape, value
from tests.unit.test_grammar import SCHEMA, _valid

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
SYSTEM = "Answer briefly."
QUESTION = "Where is the river?"
ALIAS = "claude-sonnet-4-5"  # what a tool that asks for Claude by name sends
PICK = {"name": "pick", "description": "Pick a color", "input_schema": SCHEMA}


@pytest.fixture(scope="module")
def cluster(tiny_model):
    with ParallelCluster(tiny_model, http_port=-1, router_args=["--served-model-name", f"{MODEL},{ALIAS}"]) as c:
        yield c


@pytest.fixture(scope="module")
def api(cluster):
    with anthropic.Anthropic(base_url=cluster.http_url, api_key="unused", max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def chat(cluster):
    with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        def create(messages, **kwargs):
            return client.chat.completions.create(model=MODEL, messages=messages, **kwargs)
        yield create


def test_text_and_usage_equal_the_chat_endpoints_whole_and_streamed(api, chat):
    expected = chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}], max_tokens=10,
                    temperature=0, extra_body={"ignore_eos": True})
    kwargs = dict(model=MODEL, max_tokens=10, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}],
                  extra_body={"temperature": 0, "ignore_eos": True})
    message = api.messages.create(**kwargs)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == expected.choices[0].message.content and message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (expected.usage.prompt_tokens, 10)
    with api.messages.stream(**kwargs) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == final.content[0].text == message.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10
    assert api.messages.count_tokens(model=MODEL, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]) \
        .input_tokens == expected.usage.prompt_tokens


def test_an_alias_of_the_model_is_served_under_its_name(api, chat):
    """--served-model-name NAME,ALIAS: a client that asks for the alias gets the model, under that name."""
    kwargs = dict(max_tokens=6, messages=[{"role": "user", "content": QUESTION}], extra_body={"temperature": 0})
    by_alias, by_name = api.messages.create(model=ALIAS, **kwargs), api.messages.create(model=MODEL, **kwargs)
    assert (by_alias.model, by_name.model) == (ALIAS, MODEL) and by_alias.content == by_name.content
    assert chat([{"role": "user", "content": QUESTION}], max_tokens=2).model == MODEL
    assert [m.id for m in api.models.list().data] == [MODEL, ALIAS]


def test_a_stop_sequence_ends_the_text_and_is_named(api, chat):
    messages = [{"role": "user", "content": QUESTION}]
    text = chat(messages, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}).choices[0].message.content
    stop = text[4:7]  # a piece of the greedy answer: the answer ends before its first appearance
    message = api.messages.create(model=MODEL, max_tokens=12, messages=messages, stop_sequences=[stop],
                                  extra_body={"temperature": 0, "ignore_eos": True})
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)
    assert message.content[0].text == text[:text.index(stop)]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_use_and_tool_results(api, chat, stream):
    kwargs = dict(model=MODEL, max_tokens=60, tools=[PICK], tool_choice={"type": "any"},
                  messages=[{"role": "user", "content": QUESTION}], extra_body={"temperature": 0.8, "seed": 3})
    if stream:
        with api.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = api.messages.create(**kwargs)
    tool = {"type": "function", "function": {"name": "pick", "description": PICK["description"], "parameters": SCHEMA}}
    expected = chat([{"role": "user", "content": QUESTION}], tools=[tool], tool_choice="required", temperature=0.8,
                    seed=3, max_tokens=60).choices[0].message.tool_calls
    uses = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use"
    assert [(u.name, u.input) for u in uses] == [(c.function.name, json.loads(c.function.arguments))
                                                 for c in expected]
    assert all(_valid(json.dumps(u.input)) for u in uses)

    results = [{"type": "tool_result", "tool_use_id": u.id, "content": "done"} for u in uses]
    answer = api.messages.create(model=MODEL, max_tokens=6, tools=[PICK], extra_body={"temperature": 0},
                                 messages=[{"role": "user", "content": QUESTION},
                                           {"role": "assistant", "content": message.content},
                                           {"role": "user", "content": results + [{"type": "text", "text": "And?"}]}])
    history = [{"role": "user", "content": QUESTION},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": u.id, "type": "function", "function": {"name": u.name, "arguments": json.dumps(
                       u.input)}} for u in uses]}] + [{"role": "tool", "content": "done"} for _ in uses] + \
        [{"role": "user", "content": "And?"}]
    expected_text = chat(history, tools=[tool], max_tokens=6, temperature=0).choices[0].message
    assert [b.text for b in answer.content if b.type == "text"] == ([expected_text.content]
                                                                   if expected_text.content else [])


def test_output_config_format_is_a_strict_json_schema(api):
    message = api.messages.create(model=MODEL, max_tokens=40, messages=[{"role": "user", "content": QUESTION}],
                                  output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
                                  extra_body={"temperature": 0.9, "seed": 2})
    assert _valid(message.content[0].text) and message.stop_reason == "end_turn"


@pytest.mark.parametrize("body, status, fragment", [
    (dict(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}]),
     400, "image"),
    (dict(messages=[{"role": "user", "content": "x"}], thinking={"type": "enabled", "budget_tokens": 1024}), 400,
     "thinking"),
    (dict(messages=[{"role": "system", "content": "x"}]), 400, "role"),
    (dict(messages=[]), 400, "at least one"),
    (dict(messages=[{"role": "user", "content": "x"}], tools=[{"type": "web_search_20250305", "name": "s"}]), 400,
     "client tools"),
    (dict(messages=[{"role": "user", "content": "x"}], model="claude-opus-4"), 404, "does not exist"),
], ids=["image", "thinking", "system-role", "empty", "server-tool", "other-model"])
def test_errors_are_anthropics_shape(api, body, status, fragment):
    with pytest.raises(anthropic.APIStatusError) as err:
        api.messages.create(**{"model": MODEL, "max_tokens": 4, **body})
    assert err.value.status_code == status and err.value.body["type"] == "error"
    assert fragment in err.value.body["error"]["message"]
    assert err.value.body["error"]["type"] == ("invalid_request_error" if status == 400 else "not_found_error")


def test_http_requests_are_counted_by_route_and_status(cluster, api):
    """splitserve_router_http_requests_total: routes by their template, so ids do not make new series."""
    def counted(**labels) -> float:
        return value(scrape(cluster.http_url + "/metrics"), "splitserve_router_http_requests_total", **labels)

    before = counted(route="/v1/messages", method="POST", status="200"), counted(route="other", status="404")
    api.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.NotFoundError):
        api.messages.create(model="claude-opus-4", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.NotFoundError):
        api.get("/v1/no-such-route", cast_to=object)
    assert counted(route="/v1/messages", method="POST", status="200") == before[0] + 1
    assert counted(route="/v1/messages", method="POST", status="404") >= 1
    assert counted(route="other", status="404") == before[1] + 1

