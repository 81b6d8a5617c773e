"""OpenAI's Responses API (`/v1/responses`) with the official `openai` client against a real local
cluster (router + prefill + decode on the tiny model). The reference is the chat completions
endpoint (itself held to the gRPC path and the engine): the same request in chat's words gives
the same text, calls and usage, whole and streamed (the client's own stream accumulator
rebuilds the response), and a conversation continued by `previous_response_id` is the chat
request with the whole history."""

from __future__ import annotations

import json

import openai
import pytest

from splitserve.localcluster.procs import service_command, spawn, stop
from tests.support.cluster import ParallelCluster
from tests.unit.test_grammar import SCHEMA, _valid

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
INSTRUCTIONS = "Answer briefly."
QUESTION = "Where is the river?"
PICK = {"type": "function", "name": "pick", "description": "Pick a color", "parameters": SCHEMA}


@pytest.fixture(scope="module")
def api(tiny_model):
    with ParallelCluster(tiny_model, http_port=-1) as cluster:
        with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
            yield client


def chat(api, messages, **kwargs):
    return api.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kwargs)


def test_text_equals_the_chat_endpoints_whole_and_streamed(api):
    expected = chat(api, [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}],
                    max_tokens=12, extra_body={"ignore_eos": True})
    kwargs = dict(model=MODEL, input=QUESTION, instructions=INSTRUCTIONS, max_output_tokens=12, temperature=0,
                  extra_body={"ignore_eos": True})
    whole = api.responses.create(**kwargs)
    assert whole.output_text == expected.choices[0].message.content
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (expected.usage.prompt_tokens, 12)
    assert whole.instructions == INSTRUCTIONS and whole.max_output_tokens == 12 and whole.model == MODEL

    events = list(api.responses.create(stream=True, **kwargs))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:4]] == ["response.created", "response.in_progress", "response.output_item.added",
                                            "response.content_part.added"]
    assert [e.type for e in events[-4:]] == ["response.output_text.done", "response.content_part.done",
                                             "response.output_item.done", "response.incomplete"]
    final = events[-1].response
    assert final.status == "incomplete" and final.id == events[0].response.id
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text and final.usage.output_tokens == 12


def test_previous_response_id_continues_the_stored_conversation(api):
    first = api.responses.create(model=MODEL, input=QUESTION, instructions=INSTRUCTIONS, max_output_tokens=8,
                                 temperature=0)
    follow_up = "And the sea?"
    second = api.responses.create(model=MODEL, input=follow_up, previous_response_id=first.id, max_output_tokens=8,
                                  temperature=0)
    # instructions do not carry over (OpenAI's rule): the history is the turns alone
    expected = chat(api, [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first.output_text},
                          {"role": "user", "content": follow_up}], max_tokens=8)
    assert second.output_text == expected.choices[0].message.content
    assert second.usage.input_tokens == expected.usage.prompt_tokens and second.previous_response_id == first.id
    assert api.responses.retrieve(first.id).output_text == first.output_text
    api.responses.delete(first.id)
    for gone in (lambda: api.responses.retrieve(first.id),
                 lambda: api.responses.create(model=MODEL, input="x", previous_response_id=first.id)):
        with pytest.raises(openai.NotFoundError, match="no stored response"):
            gone()
    unstored = api.responses.create(model=MODEL, input=QUESTION, max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(unstored.id)


def test_input_items_of_a_stored_response_page_by_page(api):
    given = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Far away."},
             {"role": "user", "content": [{"type": "input_text", "text": "Which "}, {"type": "input_text", "text": "sea?"}]}]
    response = api.responses.create(model=MODEL, input=given, instructions=INSTRUCTIONS, max_output_tokens=2)
    items = list(api.responses.input_items.list(response.id, order="asc"))  # the client follows the pages itself
    assert [(i.role, [c.text for c in i.content]) for i in items] == \
        [("user", [QUESTION]), ("assistant", ["Far away."]), ("user", ["Which sea?"])]
    assert [c.type for i in items for c in i.content] == ["input_text", "output_text", "input_text"]
    newest = api.responses.input_items.list(response.id, limit=1)  # OpenAI's default order: newest first
    assert [i.id for i in newest.data] == [items[-1].id] and newest.has_more
    after = api.responses.input_items.list(response.id, limit=5, after=items[-1].id)
    assert [i.id for i in after.data] == [items[1].id, items[0].id] and not after.has_more


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_function_calls_and_their_outputs(api, stream):
    kwargs = dict(model=MODEL, input=QUESTION, tools=[PICK], tool_choice="required", temperature=0.8,
                  max_output_tokens=60, extra_body={"seed": 3})
    if stream:
        with api.responses.stream(**kwargs) as events:
            response = events.get_final_response()
    else:
        response = api.responses.create(**kwargs)
    expected = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=[
        {"type": "function", "function": {k: PICK[k] for k in ("name", "description", "parameters")}}],
        tool_choice="required", temperature=0.8, seed=3, max_tokens=60).choices[0].message.tool_calls
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == [(c.function.name, c.function.arguments) for c in expected]
    assert response.status == "completed" and all(_valid(c.arguments) for c in calls)

    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": '{"ok": true}'} for c in calls]
    answer = api.responses.create(model=MODEL, input=outputs, previous_response_id=response.id, max_output_tokens=6,
                                  temperature=0)
    history = [{"role": "user", "content": QUESTION},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                   for c in calls]}] + [{"role": "tool", "tool_call_id": c.call_id, "content": '{"ok": true}'}
                                        for c in calls]
    assert answer.output_text == chat(api, history, max_tokens=6).choices[0].message.content


def test_text_format_json_schema_and_logprobs(api):
    kwargs = dict(model=MODEL, input=QUESTION, temperature=0.9, extra_body={"seed": 2}, max_output_tokens=40,
                  text={"format": {"type": "json_schema", "name": "pick", "schema": SCHEMA, "strict": True}})
    response = api.responses.create(**kwargs)
    assert _valid(response.output_text) and response.text.format.type == "json_schema"
    assert response.status == "completed"  # the grammar ended the answer
    with api.responses.stream(**kwargs) as stream:  # the client's accumulator checks each item's lifecycle
        assert stream.get_final_response().output_text == response.output_text
    scored = api.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=4, top_logprobs=2,
                                  include=["message.output_text.logprobs"], extra_body={"ignore_eos": True})
    expected = chat(api, [{"role": "user", "content": QUESTION}], max_tokens=4, logprobs=True, top_logprobs=2,
                    extra_body={"ignore_eos": True}).choices[0].logprobs.content
    [part] = scored.output[0].content
    assert [(e.token, e.logprob, len(e.top_logprobs)) for e in part.logprobs] == \
        [(e.token, e.logprob, 2) for e in expected]


@pytest.mark.parametrize("body, param", [
    (dict(input="x", background=True), "background"),
    (dict(input="x", truncation="auto"), "truncation"),
    (dict(input="x", tools=[{"type": "web_search"}]), "tools.0"),
    (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]),
     "input.0.content"),
    (dict(input=[{"type": "item_reference", "id": "msg_1"}]), "input.0"),
    (dict(input=[{"type": "function_call_output", "output": "1"}]), "input.0.call_id"),
    (dict(input=[{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}]),
     "input.0.output"),
    (dict(input="x", max_output_tokens=-1), "max_output_tokens"),
    (dict(input="x", tool_choice={"type": "file_search"}, tools=[PICK]), "tool_choice"),
    (dict(input=[]), "input"),
    (dict(input="x", extra_body={"use_beam_search": True}), "use_beam_search"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(api, body, param):
    with pytest.raises(openai.BadRequestError) as err:
        api.responses.create(model=MODEL, **body)
    assert err.value.body["param"] == param, err.value.body
    with pytest.raises(openai.NotFoundError):
        api.responses.create(model="no-such-model", input="x")
    assert json.loads(json.dumps(err.value.body))["type"] == "invalid_request_error"


def test_router_replicas_sharing_a_redis_store_continue_each_others_conversations(tiny_model, redis_url):
    """--responses-store redis://...: a response stored through one router is continued, read and deleted
    through another (what several router replicas behind one Service need)."""
    with ParallelCluster(tiny_model, prefill=0, decode=0, colocated=1, http_port=-1,
                         router_args=["--responses-store", redis_url]) as cluster:
        nodes = ",".join(f"{role}={node.address}" for role, node in cluster.nodes)
        second = spawn("router-b", service_command("router", "--model", str(tiny_model), "--host", "127.0.0.1",
                                                   "--port", "0", "--http-port", "-1", "--nodes", nodes,
                                                   "--responses-store", redis_url))
        try:
            one, two = (openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
                        for url in (cluster.http_url, second.extra["http"]))
            first = one.responses.create(model=MODEL, input=QUESTION, max_output_tokens=6, temperature=0)
            follow_up = two.responses.create(model=MODEL, input="And the sea?", previous_response_id=first.id,
                                             max_output_tokens=6, temperature=0)
            expected = one.chat.completions.create(model=MODEL, temperature=0, max_tokens=6, messages=[
                {"role": "user", "content": QUESTION}, {"role": "assistant", "content": first.output_text},
                {"role": "user", "content": "And the sea?"}])
            assert follow_up.output_text == expected.choices[0].message.content
            assert two.responses.retrieve(first.id).output_text == first.output_text
            two.responses.delete(first.id)
            with pytest.raises(openai.NotFoundError):
                one.responses.retrieve(first.id)
        finally:
            stop([second])

