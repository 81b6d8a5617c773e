"""Prompt logprobs (vLLM's prompt_logprobs; OpenAI's echo with logprobs) against HF transformers' forward pass:
every prompt token's logprob and top-k, with the prompt prefilled in chunks beside other requests, never from
the prefix cache; over protobuf; and the completions shape that echoes the prompt."""

import pytest

from router.cluster.orchestrator import Done
from router.front.completion import Finish, Piece
from router.front.openai_format import CompletionShape, Echo, whole_response
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.rpc.convert import sampling_from_proto, sampling_to_proto
from splitserve.rpc.logprobs import prompt_logprobs_from_proto, prompt_logprobs_to_proto
from tests.support.hf_reference import assert_prompt_logprobs_match_hf, hf_model
from tests.unit.test_engine_vs_hf import random_prompts


def test_chunked_batch_equals_hf(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=24))
    prompts = random_prompts(engine.tokenizer.vocab_size)
    params = [SamplingParams(max_tokens=4, prompt_logprobs=5 if i % 2 else 0) for i in range(len(prompts))]
    results = engine.generate(prompts, params)
    plain = engine.generate(prompts, SamplingParams(max_tokens=4))
    model = hf_model(str(tiny_model))
    for prompt, result, same in zip(prompts, results, plain):
        assert result.token_ids == same.token_ids and same.prompt_logprobs is None
        assert_prompt_logprobs_match_hf(prompt, result.prompt_logprobs, model)


def test_a_cached_prefix_is_computed_again(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=64))
    prompt = random_prompts(engine.tokenizer.vocab_size)[5]
    assert engine.generate([prompt], SamplingParams(max_tokens=1))[0].num_cached_tokens == 0
    assert engine.generate([prompt], SamplingParams(max_tokens=1))[0].num_cached_tokens > 0
    again = engine.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=2))[0]
    assert again.num_cached_tokens == 0
    assert_prompt_logprobs_match_hf(prompt, again.prompt_logprobs, hf_model(str(tiny_model)))


def test_a_one_token_prompt_has_one_empty_entry(tiny_model):
    result = Engine(tiny_model, EngineConfig(num_blocks=16)).generate([[5]], SamplingParams(prompt_logprobs=1))[0]
    assert result.prompt_logprobs == [None]


def test_range_and_protobuf():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
    params = SamplingParams(prompt_logprobs=0)
    assert sampling_from_proto(sampling_to_proto(params)) == params
    assert sampling_from_proto(sampling_to_proto(SamplingParams())).prompt_logprobs is None
    entries = [None, (-1.5, [(3, -0.5)]), (-0.25, [])]
    assert prompt_logprobs_from_proto(prompt_logprobs_to_proto(entries)) == entries
    assert prompt_logprobs_to_proto(None) == [] and prompt_logprobs_from_proto([]) is None


class Texts:
    def __call__(self, token_id):
        return f"<{token_id}>"


def shape(scores_only: bool) -> CompletionShape:
    return CompletionShape("cmpl-1", "m", Texts(), num_prompt_tokens=2, logprobs=True,
                           echo=Echo("hi there", [1, 2], scores_only))


FIRST = Piece([7], "<7>", [(-0.5, [(7, -0.5)])], prompt_logprobs=[None, (-2.0, [(9, -1.0)])])
FINISH = Finish("stop", 2, Done("stop", 0, route=None), 0.1, 0.2)


def test_echo_puts_the_prompt_and_its_logprobs_in_front():
    body = whole_response([shape(False)], [([FIRST, Piece([8], "<8>", [(-1.0, [(8, -1.0)])])], FINISH)])
    [choice] = body["choices"]
    assert choice["text"] == "hi there<7><8>" and choice["finish_reason"] == "stop"
    assert choice["logprobs"] == {"tokens": ["<1>", "<2>", "<7>", "<8>"], "token_logprobs": [None, -2.0, -0.5, -1.0],
                                  "top_logprobs": [None, {"<9>": -1.0}, {"<7>": -0.5}, {"<8>": -1.0}],
                                  "text_offset": [0, 3, 6, 9]}
    assert body["usage"]["completion_tokens"] == 2


def test_echo_with_max_tokens_0_is_the_prompt_alone():
    streamed = shape(True)
    first, second = streamed.chunk(FIRST, False), streamed.chunk(Piece([8], "<8>", [(-1.0, [])]), False)
    assert first["choices"][0]["text"] == "hi there" and second is None
    assert first["choices"][0]["logprobs"]["token_logprobs"] == [None, -2.0]
    assert streamed.final_chunk(FINISH, False)["choices"][0]["finish_reason"] == "length"
    body = whole_response([shape(True)], [([FIRST], FINISH)])
    assert body["choices"][0]["text"] == "hi there" and body["usage"]["completion_tokens"] == 0
