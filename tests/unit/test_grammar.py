"""Structured output (grammar.py): every output of a grammar-constrained request is in the grammar's language,
whatever the sampling; a continuation (decode node, failover) replays what was sampled; bad grammars are refused
with a ValueError and change nothing; the grammar travels over protobuf."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.engine.grammar import Grammars, json_schema_grammar
from splitserve.rpc.convert import sampling_from_proto, sampling_to_proto
from tests.unit.test_engine_vs_hf import random_prompts

# compact JSON: a random model left free to emit whitespace rarely closes its object within max_tokens
SCHEMA = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["color", "n"], "additionalProperties": False, "x-guidance": {"whitespace_flexible": False}}


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(block_size=4, num_blocks=512, max_num_batched_tokens=32))


def _valid(text: str) -> bool:
    value = json.loads(text)
    return set(value) == {"color", "n"} and value["color"] in ("red", "green", "blue") and 0 <= value["n"] <= 99


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, seed=1, top_p=0.9, logprobs=3),
                                      dict(temperature=1.5, seed=2, repetition_penalty=1.3, min_tokens=30)],
                         ids=["greedy", "seeded", "penalized_min_tokens"])
def test_every_output_is_in_the_language(engine, sampling):
    prompts = random_prompts(engine.tokenizer.vocab_size)[:6]
    results = engine.generate(prompts, SamplingParams(max_tokens=40, grammar=json_schema_grammar(SCHEMA), **sampling))
    assert all(r.finish_reason == "stop" and _valid(r.text) for r in results), [r.text for r in results]
    free = engine.generate(prompts, SamplingParams(max_tokens=40, **sampling))
    assert not any(r.text.startswith("{") for r in free)  # the grammar did it, not the model


def test_a_continuation_replays_the_output_it_has(engine):
    """What a decode node (first token from prefill) or a failover (tokens already streamed) continues from."""
    prompt, params = random_prompts(engine.tokenizer.vocab_size)[3], SamplingParams(
        max_tokens=40, temperature=1.0, seed=9, grammar=json_schema_grammar(SCHEMA))
    whole = engine.generate([prompt], params)[0].token_ids
    engine.add_request(prompt + whole[:5], params, "rest", num_prior_output_tokens=5)
    rest = []
    while engine.has_unfinished():
        rest += [t for out in engine.step() for t in out.new_token_ids]
    assert rest == whole[5:]
    with pytest.raises(ValueError, match="does not fit the grammar"):  # output the grammar never allowed
        engine.add_request(prompt + [engine.tokenizer.encode("x", add_special_tokens=False)[0]], params, "bad",
                           num_prior_output_tokens=1)
    assert not engine.has_unfinished() and "bad" not in engine.requests


@pytest.mark.parametrize("grammar", ['{"grammars": [{"json_schema": {"type": "bogus"}}]}', "not a grammar"])
def test_a_bad_grammar_is_refused_and_changes_nothing(engine, grammar):
    with pytest.raises(ValueError, match="grammar"):
        engine.add_request([1, 2, 3], SamplingParams(grammar=grammar), "bad-grammar")
    assert not engine.has_unfinished() and "bad-grammar" not in engine.requests


def test_valid_grammars_are_remembered_and_bad_ones_refused_every_time(engine):
    grammars = Grammars(engine.tokenizer, engine.model_config.vocab_size)
    for n in range(70):
        grammars.check(json_schema_grammar({"type": "integer", "maximum": n}))
        assert 0 < len(grammars._checked) <= 64
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid grammar"):
            grammars.check('{"grammars": [{"json_schema": {"type": "bogus"}}]}')


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=10))
def test_any_schema_is_compiled_or_refused_with_a_value_error(engine, schema):
    grammars = Grammars(engine.tokenizer, engine.model_config.vocab_size)
    try:
        grammars.check(json_schema_grammar(schema if isinstance(schema, dict) else {"type": "array", "items": schema}))
    except ValueError:
        pass


def test_the_grammar_travels_through_protobuf():
    params = SamplingParams(grammar=json_schema_grammar(SCHEMA))
    assert sampling_from_proto(sampling_to_proto(params)) == params
    assert sampling_from_proto(sampling_to_proto(SamplingParams())).grammar is None


def test_the_real_model_answers_in_the_schema(smollm2_model):
    """SmolLM2 asked for JSON: free, it answers with a URL; under the schema, a JSON object with the right city."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"},
                                               "population_millions": {"type": "integer", "minimum": 0, "maximum": 2000}},
              "required": ["city", "country", "population_millions"], "additionalProperties": False}
    engine = Engine(smollm2_model, EngineConfig(num_blocks=64))
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France? Answer in JSON "
                                            "with the city, its country and its population in millions."}])
    result = engine.generate([prompt], SamplingParams(max_tokens=80, grammar=json_schema_grammar(schema)))[0]
    answer = json.loads(result.text)
    assert result.finish_reason == "stop" and answer["city"] == "Paris" and set(answer) == set(schema["required"])
