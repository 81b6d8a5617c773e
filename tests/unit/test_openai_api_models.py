"""OpenAI request bodies -> engine parameters, refusals that name the field, and the response
shapes (chunks, usage, logprobs) built from the router's pieces."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.front.completion import Finish, Piece
from router.front.openai_format import ChatShape, CompletionShape, whole_response
from router.front.openai_format import usage as usage_of
from router.front.openai_models import ChatCompletionRequest, CompletionRequest, InvalidRequest
from router.cluster.orchestrator import Done


def parse(cls, **body):
    request = cls.parse(json.dumps(body).encode())
    request.check_supported()
    return request


def test_completion_defaults_follow_openai():
    request = parse(CompletionRequest, prompt="hi")
    params = request.sampling_params()
    assert (params.max_tokens, params.temperature, params.top_p, params.logprobs) == (16, 1.0, 1.0, None)
    assert request.prompt_inputs() == [{"prompt": "hi"}] and not request.include_usage


def test_completion_extensions_and_prompt_forms():
    request = parse(CompletionRequest, prompt=[[5, 6, 7]], max_tokens=3, stop="##", seed=4, top_k=-1,
                    ignore_eos=True, min_tokens=2, logprobs=2, stream=True, stream_options={"include_usage": True},
                    user="ignored", unknown_field=1)
    params = request.sampling_params()
    assert request.prompt_inputs() == [{"token_ids": [5, 6, 7]}]
    assert (params.stop, params.seed, params.top_k, params.ignore_eos, params.min_tokens, params.logprobs) == \
        (("##",), 4, 0, True, 2, 2)
    assert request.include_usage
    assert parse(CompletionRequest, prompt=[1, 2]).prompt_inputs() == [{"token_ids": [1, 2]}]
    assert parse(CompletionRequest, prompt=["one"]).prompt_inputs() == [{"prompt": "one"}]


@pytest.mark.parametrize("cls, body, param", [
    (CompletionRequest, dict(prompt="x", n=17), "n"),
    (CompletionRequest, dict(prompt="x", n=0), "n"),
    (CompletionRequest, dict(prompt="x", suffix="y"), "suffix"),
    (CompletionRequest, dict(prompt="x", best_of=2, n=3), "best_of"),
    (CompletionRequest, dict(prompt="x", best_of=17), "best_of"),
    (CompletionRequest, dict(prompt="x", best_of=3, stream=True), "best_of"),
    (CompletionRequest, dict(prompt="x", best_of=3, echo=True, max_tokens=0), "best_of"),
    (CompletionRequest, dict(prompt=["x"] * 5, best_of=16), "prompt"),
    (CompletionRequest, dict(prompt="x", logit_bias={"five": 1}), "logit_bias"),
    (CompletionRequest, dict(prompt="x", logit_bias={"5": "up"}), "logit_bias.5"),
    (CompletionRequest, dict(prompt="x", max_tokens="many"), "max_tokens"),
    (CompletionRequest, dict(), "prompt"),
    (ChatCompletionRequest, dict(messages=[]), "messages"),
    (ChatCompletionRequest, dict(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
    (ChatCompletionRequest, dict(messages=[{"role": "user", "content": "x"}], top_logprobs=2), "top_logprobs"),
    (ChatCompletionRequest, dict(messages=[{"role": "user", "content": "x"}], tools=[{"type": "function"}]),
     "tools.0.function"),
    (ChatCompletionRequest, dict(messages=[{"role": "user", "content": "x"}], response_format={"type": "xml"}),
     "response_format"),
    (CompletionRequest, dict(prompt="x", response_format={"type": "json_schema"}), "response_format"),
    (ChatCompletionRequest, dict(messages=[{"role": "user", "content": "x"}], response_format="json"), "response_format"),
    (ChatCompletionRequest, dict(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages"),
    (ChatCompletionRequest, dict(messages=[{"role": "user", "content": "x"}], functions=[{"name": "f"}]), "functions"),
    (ChatCompletionRequest, dict(messages=[{"role": "user", "content": "x"}], function_call="auto"), "function_call"),
    (CompletionRequest, dict(prompt="x", prompt_embeds="AAAA"), "prompt_embeds"),
    (CompletionRequest, dict(prompt="x", logits_processors=["pkg.Proc"]), "logits_processors"),
    (ChatCompletionRequest, dict(messages=[{"role": "user", "content": "x"}], echo=True), "echo"),
    (CompletionRequest, dict(prompt="x", prompt_logprobs=21), "prompt_logprobs"),
])
def test_unsupported_or_invalid_fields_are_refused_by_name(cls, body, param):
    with pytest.raises(InvalidRequest) as err:
        parse(cls, **body).chat_messages() if cls is ChatCompletionRequest else parse(cls, **body).prompt_inputs()
    assert err.value.param == param


def test_penalties_reach_the_sampling_params_and_their_range_is_checked():
    body = parse(CompletionRequest, prompt="x", presence_penalty=0.5, frequency_penalty=-0.25, repetition_penalty=1.2)
    params = body.sampling_params()
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.5, -0.25, 1.2)
    assert parse(CompletionRequest, prompt="x", presence_penalty=0).sampling_params().penalized is False
    with pytest.raises(ValueError, match="frequency_penalty"):
        parse(CompletionRequest, prompt="x", frequency_penalty=2.5).sampling_params()


def test_response_format_becomes_a_grammar():
    user = [{"role": "user", "content": "x"}]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = dict(type="json_schema", json_schema={"name": "thing", "schema": schema, "strict": True})
    grammar = parse(ChatCompletionRequest, messages=user, response_format=body).sampling_params(8).grammar
    assert '"required": ["a"]' in grammar
    assert parse(CompletionRequest, prompt="x", response_format={"type": "json_object"}).sampling_params().grammar
    assert parse(CompletionRequest, prompt="x", response_format={"type": "text"}).sampling_params().grammar is None


def test_echo_scores_the_prompt_and_max_tokens_0_needs_it():
    params = parse(CompletionRequest, prompt="x", echo=True, logprobs=2, max_tokens=0).sampling_params()
    assert (params.max_tokens, params.logprobs, params.prompt_logprobs) == (1, 2, 2)  # the one token is dropped
    assert parse(CompletionRequest, prompt="x", echo=True).sampling_params().prompt_logprobs is None  # no logprobs
    with pytest.raises(ValueError, match="max_tokens"):
        parse(CompletionRequest, prompt="x", max_tokens=0).sampling_params()


def test_logit_bias_keys_become_token_ids():
    params = parse(ChatCompletionRequest, messages=[{"role": "user", "content": "x"}],
                   logit_bias={"50256": -100, "7": 2.5}).sampling_params(8)
    assert params.logit_bias == ((7, 2.5), (50256, -100.0))
    with pytest.raises(ValueError, match=r"\[-100, 100\]"):
        parse(CompletionRequest, prompt="x", logit_bias={"5": 101}).sampling_params()


def test_several_prompts_each_with_n_choices():
    assert parse(CompletionRequest, prompt=["a", "b"]).prompt_inputs() == [{"prompt": "a"}, {"prompt": "b"}]
    assert parse(CompletionRequest, prompt=[[1], [2, 3]]).prompt_inputs() == [{"token_ids": [1]}, {"token_ids": [2, 3]}]
    assert len(parse(CompletionRequest, prompt=["a"] * 4, n=16).prompt_inputs()) == 4
    with pytest.raises(InvalidRequest, match="exceeds 64") as err:
        parse(CompletionRequest, prompt=["a"] * 5, n=13).prompt_inputs()
    assert err.value.param == "prompt"
    with pytest.raises(InvalidRequest):
        parse(CompletionRequest, prompt=["a", [1]])


def test_chat_parameters():
    request = parse(ChatCompletionRequest, messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                   {"type": "text", "text": "b"}]}],
                    max_tokens=5, max_completion_tokens=7, logprobs=True)
    assert request.chat_messages() == [{"role": "user", "content": "ab"}]
    params = request.sampling_params(room=100)
    assert params.max_tokens == 7 and params.logprobs == 0
    assert parse(ChatCompletionRequest, messages=[{"role": "user", "content": "x"}]).sampling_params(50).max_tokens == 50


class Texts:
    def __call__(self, token_id):
        return f"<{token_id}>"


def finish(reason="length", n=2):
    return Finish(reason, n, Done(reason, 3, route=None), 0.1, 0.2)


def test_completion_shape_with_logprobs():
    shape = CompletionShape("cmpl-1", "m", Texts(), num_prompt_tokens=4, logprobs=True)
    pieces = [Piece([7], "<7>", [(-0.5, [(7, -0.5), (8, -1.0)])]), Piece([8], "<8>", [(-1.5, [(9, -0.2), (8, -1.5)])])]
    body = shape.response(pieces, finish())
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and choice["text"] == "<7><8>" and choice["finish_reason"] == "length"
    assert choice["logprobs"] == {"tokens": ["<7>", "<8>"], "token_logprobs": [-0.5, -1.5],
                                  "top_logprobs": [{"<7>": -0.5, "<8>": -1.0}, {"<9>": -0.2, "<8>": -1.5}],
                                  "text_offset": [0, 3]}
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6,
                             "prompt_tokens_details": {"cached_tokens": 3}}


def test_chat_stream_chunks():
    shape = ChatShape("chatcmpl-1", "m", Texts(), num_prompt_tokens=4, logprobs=False)
    first, second = shape.chunk(Piece([7], "a"), True), shape.chunk(Piece([8], "b"), True)
    last, usage = shape.final_chunk(finish("stop"), True), shape.usage_chunk(usage_of([shape], [finish("stop")]))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert second["choices"][0]["delta"] == {"content": "b"} and second["usage"] is None
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 6
    assert {c["object"] for c in (first, second, last, usage)} == {"chat.completion.chunk"}


def test_usage_counts_each_prompt_once_and_every_choice():
    shapes = [CompletionShape("cmpl-1", "m", Texts(), num_prompt_tokens=n, logprobs=False, index=i, counts_prompt=first)
              for i, (n, first) in enumerate([(4, True), (4, False), (9, True), (9, False)])]
    body = whole_response(shapes, [([Piece([7], "a")], finish(n=k)) for k in (1, 2, 3, 4)])
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"] == {"prompt_tokens": 13, "completion_tokens": 10, "total_tokens": 23,
                             "prompt_tokens_details": {"cached_tokens": 6}}


def test_chat_logprobs_entries():
    shape = ChatShape("chatcmpl-1", "m", Texts(), num_prompt_tokens=1, logprobs=True)
    body = shape.response([Piece([7], "<7>", [(-0.5, [(7, -0.5)])])], finish())
    [entry] = body["choices"][0]["logprobs"]["content"]
    assert entry == {"token": "<7>", "logprob": -0.5, "bytes": list(b"<7>"),
                     "top_logprobs": [{"token": "<7>", "logprob": -0.5, "bytes": list(b"<7>")}]}
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "<7>"}


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
FIELDS = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "logprobs",
          "top_logprobs", "stream", "stream_options", "min_tokens", "ignore_eos", "documents", "echo", "tools",
          "response_format", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "tool_choice",
          "stop_token_ids"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([CompletionRequest, ChatCompletionRequest]),
       st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8) | JSON)
def test_any_json_body_is_accepted_or_refused_with_a_value_error(cls, body):
    """Bad input surfaces as ValueError (-> 400), never as another exception (-> 500)."""
    try:
        request = cls.parse(json.dumps(body).encode())
        request.check_supported()
        if cls is CompletionRequest:
            request.prompt_inputs()
            request.sampling_params()
        else:
            request.chat_messages()
            request.sampling_params(room=16)
    except ValueError:
        pass
