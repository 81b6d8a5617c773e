"""Tool calling by constrained decoding (router/front/tools.py): what is refused, the grammar and the prompt a
request gets, the response shapes, and SmolLM2 calling a named function with the right argument."""

import json

import pytest

from router.cluster.orchestrator import Done
from router.front.completion import Finish, Piece
from router.front.intake import Frontend
from router.front.openai_format import ChatShape
from router.front.openai_models import ChatCompletionRequest, InvalidRequest
from router.front.tools import CALL_MARKER, FunctionDef
from splitserve.engine import Engine, EngineConfig
from splitserve.engine.grammar import Grammars

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def parse(**body) -> ChatCompletionRequest:
    request = ChatCompletionRequest.parse(json.dumps({"messages": USER, **body}).encode())  # body's messages win
    request.check_supported()
    return request


@pytest.mark.parametrize("body, param", [
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


@pytest.mark.parametrize("body", [dict(tools=[WEATHER, TIME]), dict(tools=[WEATHER, TIME], tool_choice="auto")])
def test_auto_is_the_default_and_lets_the_model_answer_text_or_begin_valid_calls(body, smollm2_model):
    request = parse(**body)
    assert request.tool_mode == "auto" and CALL_MARKER in request.chat_messages()[0]["content"]
    tokenizer = Frontend.from_model_dir(smollm2_model).tokenizer
    grammars = Grammars(tokenizer, 49152)
    grammar = request.sampling_params(64).grammar

    def fits(text: str) -> bool:
        matcher = grammars.matcher(grammar)
        return matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)) and not matcher.is_error()

    call = CALL_MARKER + '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'
    for good in ["It is sunny in Paris.", "<b>sunny</b>", "<tool", call]:
        assert fits(good), good
    for bad in [CALL_MARKER + "sunny", CALL_MARKER + '[{"name": "get_wind"', CALL_MARKER + '[{"name": "get_weather", '
                '"arguments": {"town": "Paris"}}]']:
        assert not fits(bad), bad
    grammar = parse(parallel_tool_calls=False, **body).sampling_params(64).grammar  # one call at most
    assert fits(call[:call.index(", {")] + "]") and not fits(call)


OPEN_WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {  # no additionalProperties
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def fits(smollm2_model):
    """fits(grammar, text): whether text, as SmolLM2's tokens, is a prefix of the grammar's language."""
    tokenizer = Frontend.from_model_dir(smollm2_model).tokenizer
    grammars = Grammars(tokenizer, 49152)

    def fits(grammar: str, text: str) -> bool:
        matcher = grammars.matcher(grammar)
        return matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)) and not matcher.is_error()
    return fits


def test_arguments_take_only_the_parameters_keys_as_does_a_strict_response_format(fits):
    named = {"type": "function", "function": {"name": "get_weather"}}
    call = '[{"name": "get_weather", "arguments": '
    for choice, prefix in [("required", call), (None, CALL_MARKER + call), (named, "")]:
        grammar = parse(tools=[OPEN_WEATHER, TIME], tool_choice=choice).sampling_params(64).grammar
        assert fits(grammar, prefix + '{"city": "Paris", "unit": "C"}'), choice
        assert not fits(grammar, prefix + '{"city": "Paris", "type"'), choice  # what SmolLM2 wrote when it could
    schema = OPEN_WEATHER["function"]["parameters"]
    for strict, extra_fits in [(True, False), (False, True), (None, True)]:
        response_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": strict}}
        grammar = parse(response_format=response_format).sampling_params(64).grammar
        assert fits(grammar, '{"city": "Paris", "type"') is extra_fits, strict


def test_the_real_model_writes_only_the_parameters(smollm2_model):
    # with the parameters open, it wrote {"city": "Montreal", "type": "string", "properties": ... to max_tokens
    request = parse(tools=[OPEN_WEATHER, TIME], tool_choice="required", max_tokens=80,
                    messages=[{"role": "user", "content": "Is it cold in Montreal today, in Fahrenheit?"}])
    prompt = Frontend.from_model_dir(smollm2_model).prompt_ids(messages=request.chat_messages())
    result = Engine(smollm2_model, EngineConfig(num_blocks=64)).generate([prompt], request.sampling_params(80))[0]
    calls = json.loads(result.text)
    assert result.finish_reason == "stop" and calls[0]["name"] == "get_weather"
    assert set(calls[0]["arguments"]) <= {"city", "unit"}  # the city is the 135M model's guess


def test_auto_text_streams_once_it_cannot_be_calls_and_calls_go_out_whole():
    text = shape("auto")
    assert text.chunk(Piece([1], "<"), False) is None  # may still become the marker
    shown = text.chunk(Piece([2], "b>hi"), False)["choices"][0]
    assert shown["delta"] == {"role": "assistant", "content": "<b>hi"}
    assert text.chunk(Piece([3], " there"), False)["choices"][0]["delta"] == {"content": " there"}
    last = text.final_chunk(finish(), False)["choices"][0]
    assert last["finish_reason"] == "stop" and last["delta"] == {}
    whole = shape("auto").response([Piece([1], "<"), Piece([2], "b>hi")], finish())["choices"][0]
    assert whole["message"]["content"] == "<b>hi" and whole["finish_reason"] == "stop"
    short = shape("auto").response([Piece([1], "<tool")], finish("length"))["choices"][0]
    assert short["message"]["content"] == "<tool" and short["finish_reason"] == "length"
    calls = shape("auto")
    pieces = [Piece([1], "<tool_"), Piece([2], 'call>[{"name": "get_time", '), Piece([3], '"arguments": {}}]')]
    assert [calls.chunk(p, False) for p in pieces] == [None, None, None]
    last = calls.final_chunk(finish(), False)["choices"][0]
    assert last["finish_reason"] == "tool_calls"
    assert last["delta"]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}
    whole = shape("auto").response(pieces, finish())["choices"][0]
    assert whole["message"]["content"] is None and whole["message"]["tool_calls"][0]["function"]["name"] == "get_time"


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
