"""Tool calling by constrained decoding (router/front/tools.py): what is refused, the grammar and the prompt a
request gets, the response shapes, and SmolLM2 calling a named function with the right argument."""

import json

import pytest

from router.cluster.orchestrator import Done
from router.front.completion import Finish, Piece
from router.front.intake import Frontend
from router.front.openai_format import ChatShape
from router.front.openai_models import ChatCompletionRequest, InvalidRequest
from router.front.tools import FunctionDef
from splitserve.engine import Engine, EngineConfig

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def parse(**body) -> ChatCompletionRequest:
    request = ChatCompletionRequest.parse(json.dumps({"messages": USER, **body}).encode())
    request.check_supported()
    return request


@pytest.mark.parametrize("body, param", [
    (dict(tools=[WEATHER]), "tool_choice"),  # OpenAI's default, auto
    (dict(tools=[WEATHER], tool_choice="auto"), "tool_choice"),
    (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (dict(tools=[WEATHER], tool_choice={"type": "function", "function": "get_weather"}), "tool_choice"),
    (dict(tools=[WEATHER], tool_choice="sometimes"), "tool_choice"),
    (dict(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}), "response_format"),
    (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}], tool_choice="required"), "tools.0.function.name"),
])
def test_what_is_refused_is_named(body, param):
    with pytest.raises(InvalidRequest) as err:
        parse(**body)
    assert err.value.param == param


def test_required_and_named_become_a_grammar_and_a_system_message():
    required = parse(tools=[WEATHER, TIME], tool_choice="required")
    assert '"minItems": 1' in required.sampling_params(64).grammar
    assert "get_weather" in required.chat_messages()[0]["content"] and required.chat_messages()[1:] == USER
    named = parse(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert isinstance(named.tool_mode, FunctionDef) and named.tool_mode.name == "get_time"
    free = parse(tools=[WEATHER], tool_choice="none")
    assert free.sampling_params(64).grammar is None and free.chat_messages() == USER


def finish(reason="stop"):
    return Finish(reason, 9, Done(reason, 0, route=None), 0.1, 0.2)


def shape(mode) -> ChatShape:
    return ChatShape("chatcmpl-1", "m", lambda t: f"<{t}>", num_prompt_tokens=4, logprobs=False, tool_mode=mode)


def test_calls_go_out_as_tool_calls_whole_and_streamed():
    answer = [Piece([1], '[{"name": "get_weather", '), Piece([2], '"arguments": {"city": "Paris"}}]')]
    body = shape("required").response(answer, finish())
    [choice] = body["choices"]
    [call] = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'} and call["type"] == "function"
    streamed = shape(FunctionDef(name="get_weather"))
    assert [streamed.chunk(p, False) for p in [Piece([1], '{"city": '), Piece([2], '"Rome"}')]] == [None, None]
    last = streamed.final_chunk(finish(), False)["choices"][0]
    assert last["finish_reason"] == "tool_calls" and last["delta"]["role"] == "assistant"
    assert last["delta"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    cut = shape("required").response([Piece([1], '[{"name": "get_')], finish("length"))["choices"][0]
    assert cut["finish_reason"] == "length" and cut["message"]["content"] == '[{"name": "get_'  # as text


def test_the_real_model_calls_the_named_function_for_paris(smollm2_model):
    request = parse(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                    max_tokens=40)
    prompt = Frontend.from_model_dir(smollm2_model).prompt_ids(messages=request.chat_messages())
    result = Engine(smollm2_model, EngineConfig(num_blocks=64)).generate([prompt], request.sampling_params(40))[0]
    arguments = json.loads(result.text)  # {"city": "Paris,"}: the 135M model's own comma, inside the schema
    assert result.finish_reason == "stop" and list(arguments) == ["city"] and arguments["city"].startswith("Paris")
