"""vLLM's structural tags (router/front/structural_tags.py): free text, each tagged segment held to its schema,
read from response_format, structured_outputs and the older top-level field; bad specs are 400s naming the field."""

import json

import pytest

from router.front.openai_models import ChatCompletionRequest, InvalidRequest
from router.front.structural_tags import structural_tag_grammar
from splitserve.engine import Engine, EngineConfig, SamplingParams

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
SPEC = {"triggers": ["<function="], "structures": [
    {"begin": "<function=get_weather>", "schema": SCHEMA, "end": "</function>"},
    {"begin": "<function=get_time>", "schema": {"type": "object"}, "end": "</function>"}]}


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(num_blocks=64))


@pytest.mark.parametrize("text, ok", [
    ('Hello <function=get_weather>{"city": "Paris"}</function> and <function=get_time>{}</function> done', True),
    ("just text, no call", True),
    ("", True),
    ('<function=get_weather>{"town": 1}</function>', False),  # not the schema
    ("<function=get_rain>{}</function>", False),  # no such structure
    ('<function=get_weather>{"city": "Paris"}', None),  # unfinished: a prefix, not complete
])
def test_the_grammar_takes_free_text_and_held_segments(engine, text, ok):
    grammars = engine.grammars
    matcher = grammars.matcher(structural_tag_grammar(SPEC))
    consumed = matcher.consume_tokens(engine.tokenizer.encode(text, add_special_tokens=False)) if text else True
    if ok is None:
        assert consumed and not matcher.is_accepting()
    else:
        assert bool(consumed and matcher.is_accepting()) == ok


def test_the_engine_writes_a_begun_call_to_its_schema(engine):
    """A random model whose output has begun a call (a continuation carrying 'Hi <function=get_weather>', whose
    tokens the grammar replays) writes the schema's JSON and the end tag, whatever it samples."""
    begun = engine.tokenizer.encode("Hi <function=get_weather>", add_special_tokens=False)
    prompt = engine.tokenizer.encode("Call:") + begun
    short = {**SCHEMA, "properties": {"city": {"type": "string", "maxLength": 4}},
             "x-guidance": {"whitespace_flexible": False}}  # a random model's string and spaces run on otherwise
    spec = {"triggers": ["<function="], "structures": [{"begin": "<function=get_weather>", "schema": short,
                                                         "end": "</function>"}]}
    for seed in range(3):
        params = SamplingParams(max_tokens=40, temperature=1.0, seed=seed, grammar=structural_tag_grammar(spec))
        rid = engine.add_request(prompt, params, num_prior_output_tokens=len(begun))
        tokens = []
        while engine.has_unfinished():
            tokens += [t for out in engine.step() if out.request_id == rid for t in out.new_token_ids]
        text = engine.tokenizer.decode(tokens)
        arguments, end, _ = text.partition("</function>")
        assert end and set(json.loads(arguments)) == {"city"}, text


def body(**fields):
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **fields})


def test_the_three_ways_of_asking_give_one_grammar():
    grammar = structural_tag_grammar(SPEC)
    for fields in ({"response_format": {"type": "structural_tag", **SPEC}},
                   {"structured_outputs": {"structural_tag": json.dumps(SPEC)}},
                   {"structured_outputs": {"structural_tag": SPEC}},
                   {"structural_tag": json.dumps(SPEC)}):
        request = body(**fields)
        request.check_supported()
        assert request.sampling_params(8).grammar == grammar


@pytest.mark.parametrize("fields, param, message", [
    ({"response_format": {"type": "structural_tag", "structures": SPEC["structures"], "triggers": ["<tool"]}},
     "response_format", "none of the triggers"),
    ({"structural_tag": "{not json"}, "structural_tag", "not a structural tag spec"),
    ({"structured_outputs": {"structural_tag": {"structures": [], "triggers": ["<"]}}}, "structured_outputs",
     "structures"),
    ({"structured_outputs": {"structural_tag": {"structures": [{"begin": "<a>", "end": "</a>"}], "triggers": ["<"]}}},
     "structured_outputs", "schema"),
    ({"structural_tag": json.dumps(SPEC), "structured_outputs": {"regex": "a"}}, "structured_outputs", "not both"),
])
def test_bad_specs_are_refused_naming_the_field(fields, param, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        request = body(**fields)
        request.check_supported()
        request.sampling_params(8)
    assert caught.value.param == param
