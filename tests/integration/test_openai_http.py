"""The router's OpenAI-compatible HTTP API with the official `openai` client against a real local
cluster (router + prefill + decode on the tiny model): text equals the gRPC path's for the same
request, usage counts, stop strings, logprobs, errors, and client disconnects."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import openai
import splitserve
import pytest

from splitserve.api.v1 import router_pb2_grpc
from router.front.intake import Frontend
from splitserve.client import Client, build_request
from splitserve.engine import Engine, SamplingParams, Tokenizer
from splitserve.engine.tokenizer import ChatFormat
from splitserve.engine.grammar import choice_grammar, json_schema_grammar, lark_grammar, regex_grammar
from tests.support.cluster import ParallelCluster, node_stats, used_blocks_settle_to_zero, wait_until
from tests.support.hf_reference import assert_prompt_logprobs_match_hf, hf_model
from tests.support.lora import write_peft_adapter
from tests.unit.test_grammar import SCHEMA, _valid

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
PROMPT = "The history of the river"
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is the river?"}]
MAX_BODY = 65536
LORA = "tiny-lora"


@pytest.fixture(scope="module")
def lora(tiny_model, tmp_path_factory):
    """A LoRA adapter PEFT wrote for the tiny model, which the nodes serve as LORA."""
    return write_peft_adapter(tiny_model, tmp_path_factory.mktemp("lora") / LORA, seed=1)


@pytest.fixture(scope="module")
def cluster(tiny_model, lora):
    with ParallelCluster(tiny_model, http_port=-1, router_args=["--max-request-bytes", str(MAX_BODY), "--allow-runtime-lora"],
                         node_args=["--lora-modules", f"{LORA}={lora}"]) as c:
        yield c


@pytest.fixture(scope="module")
def api(cluster):
    with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def grpc_result(cluster, **kwargs):
    with Client(cluster.url, timeout_s=60) as client:
        return client.complete(**kwargs)


def http_json(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_lists_the_served_model_and_its_lora_adapter(api):
    model, adapter = api.models.list().data
    assert adapter.id == LORA
    assert model.id == MODEL and model.owned_by == "splitserve"
    assert api.models.retrieve(MODEL) == model
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("no-such-model")


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.8, top_p=0.9, seed=11),
                                      dict(temperature=0.0, frequency_penalty=0.8, presence_penalty=0.4)],
                         ids=["greedy", "seeded", "penalized"])
def test_completion_equals_the_grpc_path(cluster, api, sampling):
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, extra_body={"ignore_eos": True},
                                      **sampling)
    expected = grpc_result(cluster, prompt=PROMPT, max_tokens=12, ignore_eos=True, **sampling)
    [choice] = response.choices
    assert choice.text == expected.text and choice.finish_reason == "length"
    if "frequency_penalty" in sampling:  # the penalties reach the sampler: from the second token on, logprobs move
        def logprobs(**kw):
            return api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, logprobs=1,
                                          extra_body={"ignore_eos": True}, **kw).choices[0].logprobs.token_logprobs
        plain, penalized = logprobs(temperature=0.0), logprobs(**sampling)
        assert plain[0] == penalized[0] and all(a != b for a, b in zip(plain[1:], penalized[1:]))
    assert response.usage.prompt_tokens == expected.final.prompt_tokens
    assert response.usage.completion_tokens == 12 and response.usage.total_tokens == expected.final.prompt_tokens + 12


def test_min_p_reaches_the_sampler(cluster, api):
    """vLLM's min_p: 1.0 keeps only the likeliest token (greedy, whatever the temperature); 0.2 equals gRPC's."""
    def text(**kwargs):
        return api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=3,
                                      extra_body={"ignore_eos": True, **kwargs.pop("extra", {})},
                                      **kwargs).choices[0].text
    greedy = text(temperature=0)
    assert text(temperature=1.5) != greedy and text(temperature=1.5, extra={"min_p": 1.0}) == greedy
    assert text(temperature=1.0, extra={"min_p": 0.2}) == grpc_result(
        cluster, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=3, ignore_eos=True, min_p=0.2).text
    with pytest.raises(openai.BadRequestError, match="min_p"):
        text(temperature=1.0, extra={"min_p": 2})


def test_stop_string_kept_and_special_tokens_shown_on_request(cluster, api, tiny_model):
    """vLLM's include_stop_str_in_output and skip_special_tokens: false, over HTTP and gRPC alike."""
    plain = grpc_result(cluster, prompt=PROMPT, max_tokens=10, ignore_eos=True).text
    stop = plain[3:6]
    for include, expected in ((False, plain[:plain.index(stop)]), (True, plain[:plain.index(stop) + len(stop)])):
        text = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, stop=[stop], extra_body={
            "ignore_eos": True, "include_stop_str_in_output": include}).choices[0].text
        assert text == expected == grpc_result(cluster, prompt=PROMPT, max_tokens=10, ignore_eos=True, stop=[stop],
                                               include_stop_str_in_output=include).text
    tokenizer = Tokenizer.from_dir(tiny_model)
    eos = tokenizer.eos_token_ids[0]  # forced by logit_bias: the text shows it only when asked
    for skip in (True, False):
        text = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logit_bias={str(eos): 100},
                                      extra_body={"ignore_eos": True, "skip_special_tokens": skip}).choices[0].text
        assert text == ("" if skip else tokenizer.decode([eos] * 3, skip_special_tokens=False))
    assert tokenizer.decode([eos], skip_special_tokens=False)  # the EOS token has a text to show
    streamed = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, stop=[stop], stream=True,
                                      extra_body={"ignore_eos": True, "include_stop_str_in_output": True})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain[:plain.index(stop) + len(stop)]


def test_logit_bias_steers_every_token_like_the_grpc_path(cluster, api):
    forced = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=1,
                                    logit_bias={"42": 100}, extra_body={"ignore_eos": True})
    assert grpc_result(cluster, prompt=PROMPT, max_tokens=5, ignore_eos=True, logit_bias={42: 100.0}).token_ids == [42] * 5
    assert forced.choices[0].logprobs.token_logprobs == pytest.approx([0.0] * 5, abs=1e-4)
    plain = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0)
    first = grpc_result(cluster, messages=MESSAGES, max_tokens=1).token_ids[0]  # banned below
    steered = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                          logit_bias={str(first): -100})
    assert steered.choices[0].message.content != plain.choices[0].message.content
    assert steered.choices[0].message.content == grpc_result(cluster, messages=MESSAGES, max_tokens=5,
                                                             logit_bias={first: -100.0}).text


def test_echo_with_max_tokens_0_scores_prompts_like_hf(cluster, api, tiny_model):
    """What lm-evaluation-harness sends to score texts: several prompts, echo, logprobs, max_tokens 0 (one of them
    with documents: its prompt is computed whole, not blended from the chunk cache)."""
    frontend, model = Frontend.from_model_dir(tiny_model), hf_model(str(tiny_model))
    texts = [PROMPT, "Rivers run into the sea and the sea is never full"]
    response = api.completions.create(model=MODEL, prompt=texts, max_tokens=0, echo=True, logprobs=2, temperature=0)
    for text, choice in zip(texts, response.choices):
        ids = frontend.prompt_ids(prompt=text)
        assert choice.text == text and choice.finish_reason == "length"
        assert choice.logprobs.tokens == [frontend.tokenizer.decode([t], skip_special_tokens=False) for t in ids]
        entries = [None] + [(lp, []) for lp in choice.logprobs.token_logprobs[1:]]
        assert_prompt_logprobs_match_hf(ids, entries, model)
        assert choice.logprobs.top_logprobs[0] is None and len(choice.logprobs.top_logprobs[1]) == 2
    assert response.usage.completion_tokens == 0
    documents = ["The Nile is the longest river in Africa.", "The Amazon carries the most water."]
    assert wait_until(lambda: grpc_result(cluster, prompt=PROMPT, documents=documents, max_tokens=1).final.cached_tokens,
                      30)  # the passages' KV is in the chunk cache now
    scored = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0,
                                    extra_body={"documents": documents})
    ids = frontend.prompt_ids(prompt=PROMPT, documents=documents)
    entries = [None] + [(lp, []) for lp in scored.choices[0].logprobs.token_logprobs[1:]]
    assert_prompt_logprobs_match_hf(ids, entries, model)
    assert scored.choices[0].text == frontend.tokenizer.decode(ids, skip_special_tokens=False)


def test_echo_streamed_puts_the_prompt_in_front_of_the_generated_text(cluster, api):
    stream = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, echo=True, temperature=0, stream=True,
                                    extra_body={"ignore_eos": True})
    chunks = [c.choices[0].text for c in stream if c.choices]
    assert chunks[0].startswith(PROMPT)
    assert "".join(chunks) == PROMPT + grpc_result(cluster, prompt=PROMPT, max_tokens=6, ignore_eos=True).text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_response_format_json_schema_is_the_engines_constrained_output(cluster, api, tiny_model, stream):
    """The prefill node samples the first token under the grammar, the decode node replays it and goes on."""
    response_format = {"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True}}
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=40, temperature=0.9, seed=4, n=2,
                  response_format=response_format)
    if stream:
        chunks = list(api.chat.completions.create(stream=True, **kwargs))
        texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                 for i in range(2)]
    else:
        texts = [c.message.content for c in api.chat.completions.create(**kwargs).choices]
    prompt = Frontend.from_model_dir(tiny_model).prompt_ids(messages=MESSAGES)
    expected = [Engine(tiny_model).generate([prompt], SamplingParams(
        max_tokens=40, temperature=0.9, seed=4 + i, grammar=json_schema_grammar(SCHEMA)))[0].text for i in range(2)]
    assert texts == expected and all(_valid(t) for t in texts)
    with pytest.raises(openai.BadRequestError, match="grammar"):
        api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "bogus"}}})


@pytest.mark.parametrize("fields, grammar", [
    ({"guided_choice": ["red", "green or blue", "50% grey"]}, choice_grammar(["red", "green or blue", "50% grey"])),
    ({"guided_regex": r"[a-z]{2,5}-\d{3}"}, regex_grammar(r"[a-z]{2,5}-\d{3}")),
    ({"structured_outputs": {"json": SCHEMA}}, json_schema_grammar(SCHEMA)),
    ({"guided_json": json.dumps(SCHEMA)}, json_schema_grammar(SCHEMA)),
    ({"structured_outputs": {"grammar": 'start: "yes" | "no" | NUM\nNUM: /[0-9]{1,3}/'}},
     lark_grammar('start: "yes" | "no" | NUM\nNUM: /[0-9]{1,3}/')),
], ids=["choice", "regex", "json", "guided_json_text", "lark"])
def test_vllm_structured_outputs_are_the_engines_constrained_output(cluster, api, tiny_model, fields, grammar):
    """vLLM's `structured_outputs` and older `guided_*` fields: the engine's output under the same grammar."""
    prompt = Frontend.from_model_dir(tiny_model).prompt_ids(messages=MESSAGES)
    expected = Engine(tiny_model).generate([prompt], SamplingParams(max_tokens=30, temperature=0.9, seed=5,
                                                                    grammar=grammar))[0].text
    answer = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0.9, seed=5,
                                         extra_body=fields).choices[0]
    assert answer.message.content == expected and answer.finish_reason == "stop"
    if "guided_choice" in fields:
        assert expected in fields["guided_choice"]


def test_vllm_token_limits_equal_the_engine(cluster, api, tiny_model):
    """bad_words, allowed_token_ids and truncate_prompt_tokens over HTTP and gRPC: the prefill node applies them to
    the first token, the decode node to the rest; the in-process engine under the same limits says what comes."""
    frontend, engine = Frontend.from_model_dir(tiny_model), Engine(tiny_model)
    prompt = frontend.prompt_ids(prompt=PROMPT)
    free = engine.generate([prompt], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    words = [frontend.tokenizer.decode([t]).strip() for t in free.token_ids[:4]]
    words = [w for w in words if w][:2]  # the words it wrote first: banned, it must write others
    limited = dict(max_tokens=10, ignore_eos=True)
    expected = engine.generate([prompt], SamplingParams(**limited, bad_words=tuple(words)))[0].text
    got = api.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=10,
                                 extra_body={"bad_words": words, "ignore_eos": True}).choices[0].text
    assert got == expected != free.text
    assert grpc_result(cluster, prompt=PROMPT, bad_words=words, **limited).text == expected
    allowed = sorted(set(free.token_ids[3:6]) | {42, 7})
    expected = engine.generate([prompt], SamplingParams(**limited, allowed_token_ids=tuple(allowed)))[0].token_ids
    streamed = api.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=10, logprobs=0, stream=True,
                                      extra_body={"allowed_token_ids": allowed, "ignore_eos": True})
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == [frontend.tokenizer.decode([t], skip_special_tokens=False) for t in expected]
    messages_ids = frontend.prompt_ids(messages=MESSAGES)
    expected = engine.generate([messages_ids[-5:]], SamplingParams(max_tokens=6))[0].text
    chat = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                       extra_body={"truncate_prompt_tokens": 5})
    assert chat.choices[0].message.content == expected and chat.usage.prompt_tokens == 5
    echoed = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, echo=True,
                                    extra_body={"truncate_prompt_tokens": 3})
    assert echoed.choices[0].text.startswith(frontend.tokenizer.decode(prompt[-3:], skip_special_tokens=False))
    assert grpc_result(cluster, prompt=PROMPT, max_tokens=1, truncate_prompt_tokens=3).final.prompt_tokens == 3
    with pytest.raises(openai.BadRequestError, match="allowed_token_ids"):
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body={"allowed_token_ids": [10**6]})


def test_return_token_ids_gives_the_ids_the_grpc_path_gives(cluster, api, tiny_model):
    """vLLM's return_token_ids: the prompt's ids (each completions choice's; chat: the response's) and the output's,
    whole or a chunk's worth per chunk (the prompt's on the first); return_tokens_as_token_ids names logprobs' tokens
    by id."""
    frontend = Frontend.from_model_dir(tiny_model)
    asked = {"return_token_ids": True, "ignore_eos": True}
    prompt_ids, chat_ids = frontend.prompt_ids(prompt=PROMPT), frontend.prompt_ids(messages=MESSAGES)
    output = grpc_result(cluster, prompt=PROMPT, max_tokens=6, ignore_eos=True).token_ids
    chat_output = grpc_result(cluster, messages=MESSAGES, max_tokens=6, ignore_eos=True).token_ids
    choice = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                    extra_body=asked).choices[0]
    assert (choice.prompt_token_ids, choice.token_ids) == (prompt_ids, output)
    chunks = [c for c in api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stream=True,
                                                extra_body=asked) if c.choices]
    assert chunks[0].choices[0].prompt_token_ids == prompt_ids
    assert [t for c in chunks for t in c.choices[0].token_ids] == output
    reply = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, extra_body=asked)
    assert (reply.prompt_token_ids, reply.choices[0].token_ids) == (chat_ids, chat_output)
    chunks = list(api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                              stream=True, extra_body=asked))
    assert chunks[0].prompt_token_ids == chat_ids and [t for c in chunks for t in c.choices[0].token_ids] == chat_output
    scored = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1,
                                    extra_body={**asked, "return_tokens_as_token_ids": True}).choices[0]
    assert scored.token_ids == [] and scored.logprobs.tokens == [f"token_id:{t}" for t in prompt_ids]
    named = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True,
                                        extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
    assert [e.token for e in named.choices[0].logprobs.content] == [f"token_id:{t}" for t in chat_output[:3]]


def test_continuous_usage_stats_put_each_choices_usage_on_every_chunk(cluster, api):
    chunks = list(api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, n=2, temperature=0, stream=True,
                                         stream_options={"include_usage": True, "continuous_usage_stats": True},
                                         extra_body={"ignore_eos": True}))
    prompt_tokens = chunks[-1].usage.prompt_tokens  # the last chunk: usage over both choices (one prompt)
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    for index in (0, 1):
        counts = [c.usage.completion_tokens for c in chunks[:-1] if c.choices[0].index == index]
        assert counts == sorted(counts) and counts[-1] == 5
        assert all(c.usage.prompt_tokens == prompt_tokens for c in chunks[:-1])


def test_cache_salt_keeps_cached_prefixes_apart(cluster, api):
    """Across the cluster (the prefill node's prefix cache): a prompt cached under one salt is a hit under that salt
    only; a bad salt is a 400 naming it."""
    prompt = "Salted: " + " ".join(f"word{i}" for i in range(60))

    def cached(salt):
        body = {"ignore_eos": True} | ({"cache_salt": salt} if salt else {})
        usage = api.completions.create(model=MODEL, prompt=prompt, max_tokens=2, extra_body=body).usage
        return usage.prompt_tokens_details.cached_tokens

    assert cached("tenant-a") == 0 and cached("tenant-a") > 0
    assert cached("tenant-b") == 0 and cached(None) == 0 and cached(None) > 0
    # the chunk cache, apart from the prefix cache: each request puts another passage first (no prefix is shared)
    passages = [f"Salt passage {i}: river {i} joins the Rhine at town {i}." for i in range(16)]
    orders = itertools.cycle([passages[k:] + passages[:k] for k in range(16)])

    def from_chunks(salt):
        return grpc_result(cluster, prompt="Which rivers?", documents=next(orders), max_tokens=1, cache_salt=salt).final
    assert from_chunks("tenant-a").cached_tokens == 0  # its passages' KV is stored under salt A after this
    assert wait_until(lambda: from_chunks("tenant-a").cached_tokens, 30, interval_s=0.5)
    assert from_chunks("tenant-b").cached_tokens == 0  # A's chunks are not B's
    with pytest.raises(openai.BadRequestError, match="cache_salt"):
        api.completions.create(model=MODEL, prompt=prompt, max_tokens=2, extra_body={"cache_salt": ""})


def test_best_of_returns_the_samples_with_the_highest_logprob_per_token(cluster, api, tiny_model):
    """best_of 4, n 2, seeded: the four samples are the engine's with seeds 9..12; the two with the highest mean
    token logprob come back, best first; usage counts all four."""
    frontend, engine = Frontend.from_model_dir(tiny_model), Engine(tiny_model)
    prompt = frontend.prompt_ids(prompt=PROMPT)
    samples = [engine.generate([prompt], SamplingParams(max_tokens=8, temperature=1.0, seed=9 + i, logprobs=0))[0]
               for i in range(4)]
    ranked = sorted(samples, key=lambda c: sum(lp for lp, _ in c.logprobs) / len(c.logprobs), reverse=True)
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=9, n=2,
                                      best_of=4)
    assert [c.text for c in response.choices] == [c.text for c in ranked[:2]]
    assert [c.index for c in response.choices] == [0, 1] and response.choices[0].logprobs is None
    assert response.usage.completion_tokens == sum(len(c.token_ids) for c in samples)
    with pytest.raises(openai.BadRequestError, match="best_of"):
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, best_of=2, stream=True)


def test_beam_search_over_the_cluster_equals_the_engines(cluster, api, tiny_model):
    """use_beam_search: each step a one-token request per beam through prefill and decode nodes; the beams, best
    first, are those of the same search answered by the in-process engine (tested against HF: test_beam_search)."""
    from router.front.beam_search import beam_search
    from tests.unit.test_beam_search import engine_step

    frontend, engine = Frontend.from_model_dir(tiny_model), Engine(tiny_model)
    eos = frontend.tokenizer.eos_token_ids
    beams_of_prompt = asyncio.run(beam_search(engine_step(engine, 3), frontend.prompt_ids(prompt=PROMPT), 3, 6, eos))
    for prompt_ids, call in [
        (frontend.prompt_ids(prompt=PROMPT), lambda: [c.text for c in api.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=6, n=3, extra_body={"use_beam_search": True}).choices]),
        (frontend.prompt_ids(messages=MESSAGES), lambda: [c.message.content for c in api.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=6, n=3, extra_body={"use_beam_search": True}).choices]),
    ]:
        beams = asyncio.run(beam_search(engine_step(engine, 3), prompt_ids, 3, 6, eos))
        assert call() == [frontend.tokenizer.decode([t for t in b.token_ids if t not in eos]) for b in beams]
    ids = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, n=3,
                                 extra_body={"use_beam_search": True, "return_token_ids": True}).choices
    assert [c.token_ids for c in ids] == [[t for t in b.token_ids if t not in eos] for b in beams_of_prompt]
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, logprobs=1,
                               extra_body={"use_beam_search": True})
    with pytest.raises(openai.BadRequestError, match="use_beam_search"):
        api.responses.create(model=MODEL, input="hi", max_output_tokens=4, extra_body={"use_beam_search": True})


@pytest.mark.parametrize("fields, param", [
    ({"guided_choice": ["a"], "structured_outputs": {"regex": "b"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "response_format"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_json": "[1, 2]"}, "guided_json"),
    ({"guided_grammar": 'root ::= "yes" | "no"'}, None),  # GBNF (xgrammar's) is not Lark: the grammar check says so
    ({"use_beam_search": True, "top_p": 0.5}, "top_p"),
    ({"structural_tag": "{}"}, "structural_tag"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"truncate_prompt_tokens": 2, "documents": ["a passage"]}, "truncate_prompt_tokens"),
], ids=["both-forms", "two-kinds", "with-response-format", "no-choices", "schema-not-object", "gbnf",
        "beam-search-top-p", "structural-tag", "truncate-0", "truncate-documents"])
def test_what_vllm_has_and_this_server_cannot_honour_is_a_400(api, fields, param):
    with pytest.raises(openai.BadRequestError) as err:
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body=fields)
    assert err.value.body["param"] == param, err.value.body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_calls_required_and_named(cluster, api, stream):
    pick = {"type": "function", "function": {"name": "pick", "parameters": SCHEMA}}
    clock = {"type": "function", "function": {"name": "clock", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["utc", "local"]}}, "required": ["zone"],
        "additionalProperties": False, "x-guidance": {"whitespace_flexible": False}}}}

    def calls(**kwargs):
        kwargs = dict(model=MODEL, messages=MESSAGES, tools=[pick, clock], max_tokens=80, temperature=0.8, seed=1,
                      **kwargs)
        if not stream:
            choice = api.chat.completions.create(**kwargs).choices[0]
            return choice.finish_reason, choice.message.tool_calls
        chunks = [c.choices[0] for c in api.chat.completions.create(stream=True, **kwargs) if c.choices]
        return chunks[-1].finish_reason, [d for c in chunks for d in c.delta.tool_calls or []]

    reason, named = calls(tool_choice={"type": "function", "function": {"name": "pick"}})
    assert reason == "tool_calls" and [c.function.name for c in named] == ["pick"]
    assert _valid(named[0].function.arguments) and named[0].id.startswith("call_")
    reason, required = calls(tool_choice="required")
    assert reason == "tool_calls" and required and all(c.function.name in ("pick", "clock") for c in required)
    for call in required:
        assert _valid(call.function.arguments) if call.function.name == "pick" else \
            json.loads(call.function.arguments)["zone"] in ("utc", "local")
    for seed in range(4):  # auto (no tool_choice: OpenAI's default): text, or calls that parse, as the model chose
        kwargs = dict(model=MODEL, messages=MESSAGES, tools=[pick, clock], max_tokens=40, temperature=1.0, seed=seed)
        choice = api.chat.completions.create(**kwargs).choices[0]
        if choice.finish_reason == "tool_calls":
            assert choice.message.content is None and all(c.function.name in ("pick", "clock") for c in
                                                          choice.message.tool_calls)
        else:
            assert choice.message.tool_calls is None and choice.message.content
            assert not choice.message.content.startswith("<tool_call>")
        chunks = [c.choices[0] for c in api.chat.completions.create(stream=True, **kwargs) if c.choices]
        streamed = "".join(c.delta.content or "" for c in chunks)
        assert chunks[-1].finish_reason == choice.finish_reason and streamed == (choice.message.content or "")


def test_continue_final_message_continues_the_assistants_text(cluster, api, tiny_model):
    """vLLM's chat template options: the prompt is the one /tokenize and the tokenizer give for them (held to
    transformers' apply_chat_template in tests/unit/test_chat_templates.py)."""
    messages = MESSAGES + [{"role": "assistant", "content": "The river is"}]
    options = {"continue_final_message": True, "add_generation_prompt": False}
    ids = Tokenizer.from_dir(tiny_model).encode_chat(messages, chat_format=ChatFormat(**options))
    status, tokenized = http_json(cluster.http_url + "/tokenize", json.dumps({"messages": messages, **options}).encode())
    assert status == 200 and tokenized["tokens"] == ids
    reply = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                        extra_body={"ignore_eos": True, **options})
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.choices[0].message.content == grpc_result(cluster, prompt_token_ids=ids, max_tokens=6,
                                                           ignore_eos=True).text
    over_grpc = grpc_result(cluster, messages=messages, continue_final_message=True, max_tokens=6, ignore_eos=True)
    assert over_grpc.text == reply.choices[0].message.content and over_grpc.final.prompt_tokens == len(ids)
    with pytest.raises(grpc.RpcError) as err:  # the same checks over gRPC: reserved template variables
        grpc_result(cluster, messages=messages, chat_template_kwargs={"messages": []}, max_tokens=2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for extra, param in (({"continue_final_message": True}, "continue_final_message"),
                         ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
                         ({"chat_template": "{{ messages }}"}, "chat_template")):
        with pytest.raises(openai.BadRequestError) as err:
            api.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, extra_body=extra)
        assert err.value.body["param"] == param


def test_tokenizer_endpoints_serve_the_models_tokenizer(cluster, tiny_model):
    """vLLM's /tokenize, /detokenize and /tokenizer_info (lm-evaluation-harness's remote tokenizer reads them)."""
    frontend, url = Frontend.from_model_dir(tiny_model), cluster.http_url

    def post(path: str, body: dict) -> tuple[int, dict]:
        return http_json(url + path, json.dumps(body).encode())

    status, body = post("/tokenize", {"prompt": PROMPT, "return_token_strs": True})
    assert status == 200 and body["tokens"] == frontend.prompt_ids(prompt=PROMPT) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 2048 and "".join(body["token_strs"]).endswith(PROMPT)
    bare = post("/tokenize", {"prompt": PROMPT, "add_special_tokens": False})[1]["tokens"]
    assert bare == frontend.tokenizer.encode(PROMPT, add_special_tokens=False) != body["tokens"]
    assert post("/tokenize", {"messages": MESSAGES})[1]["tokens"] == frontend.prompt_ids(messages=MESSAGES)
    assert post("/detokenize", {"tokens": bare}) == (200, {"prompt": PROMPT})
    status, info = http_json(url + "/tokenizer_info")
    assert status == 200 and info["eos_token"] == frontend.tokenizer.eos_token and info["chat_template"]
    assert post("/tokenize", {"prompt": "a", "messages": MESSAGES})[0] == 400
    status, body = post("/detokenize", {"tokens": [10**6]})
    assert status == 400 and body["error"]["param"] == "tokens"
    assert post("/tokenize", {"prompt": "a", "model": "gpt-4"})[0] == 404


def test_stop_token_ids_end_the_completion_on_that_token(cluster, api):
    first = grpc_result(cluster, prompt=PROMPT, max_tokens=1).token_ids[0]
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                      extra_body={"stop_token_ids": [first], "ignore_eos": True})
    assert response.choices[0].finish_reason == "stop" and response.usage.completion_tokens == 1
    with pytest.raises(openai.BadRequestError, match="stop token ids"):
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body={"stop_token_ids": [10**6]})


def test_streamed_completion_with_usage(cluster, api):
    stream = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
                                    stream_options={"include_usage": True}, extra_body={"min_tokens": 10})
    chunks = list(stream)
    expected = grpc_result(cluster, prompt=PROMPT, max_tokens=10)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.final.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.final.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_are_the_grpc_path_with_seed_plus_index(cluster, api):
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, n=3, temperature=0.9, seed=7,
                                      extra_body={"ignore_eos": True})
    expected = [grpc_result(cluster, prompt=PROMPT, max_tokens=6, ignore_eos=True, temperature=0.9, seed=7 + i)
                for i in range(3)]
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.text for c in response.choices] == [e.text for e in expected] and len({e.text for e in expected}) > 1
    assert response.usage.prompt_tokens == expected[0].final.prompt_tokens and response.usage.completion_tokens == 18
    greedy = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, n=2, temperature=0)
    assert greedy.choices[0].text == greedy.choices[1].text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_several_prompts_each_with_n_choices(cluster, api, stream):
    prompts = [PROMPT, "A second prompt", "Third"] if stream else [[5, 6, 7, 8, 9], [10, 11], [12]]
    kwargs = dict(model=MODEL, prompt=prompts, max_tokens=5, n=2, temperature=0.9, seed=5,
                  extra_body={"ignore_eos": True})
    expected = [grpc_result(cluster, max_tokens=5, ignore_eos=True, temperature=0.9, seed=5 + i,
                            **({"prompt": p} if isinstance(p, str) else {"prompt_token_ids": p}))
                for p in prompts for i in range(2)]  # choice k * n + i: prompt k, seed + i
    if stream:
        chunks = list(api.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
        texts = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(6)]
        usage = chunks[-1].usage
    else:
        response = api.completions.create(**kwargs)
        assert [c.index for c in response.choices] == list(range(6))
        texts, usage = [c.text for c in response.choices], response.usage
    assert texts == [e.text for e in expected]
    assert usage.prompt_tokens == sum(e.final.prompt_tokens for e in expected[::2]) and usage.completion_tokens == 30


def test_n_chat_choices_streamed_interleave_by_index(cluster, api):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=8, temperature=0.9, seed=3, n=2,
                  extra_body={"ignore_eos": True})
    whole = api.chat.completions.create(**kwargs)
    chunks = list(api.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    texts, finishes = ["", ""], [None, None]
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == [c.message.content for c in whole.choices] and finishes == ["length", "length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 16


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_equals_the_grpc_path(cluster, api, stream):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=9, temperature=0, extra_body={"ignore_eos": True})
    expected = grpc_result(cluster, messages=MESSAGES, max_tokens=9, ignore_eos=True)
    if stream:
        chunks = list(api.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        response = api.chat.completions.create(**kwargs)
        assert response.choices[0].message.role == "assistant"
        text, usage = response.choices[0].message.content, response.usage
    assert text == expected.text
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.final.prompt_tokens, 9)


def test_stop_strings_end_the_text_before_them(cluster, api):
    reference = grpc_result(cluster, prompt=PROMPT, max_tokens=24, ignore_eos=True).text
    stop = reference[12:15]
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop],
                                      extra_body={"ignore_eos": True})
    [choice] = response.choices
    assert choice.finish_reason == "stop" and stop not in choice.text and reference.startswith(choice.text)
    assert choice.text == grpc_result(cluster, prompt=PROMPT, max_tokens=24, ignore_eos=True, stop=[stop]).text
    assert response.usage.completion_tokens < 24


def test_completion_logprobs_shape(api):
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
                                      extra_body={"ignore_eos": True})
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert value <= 0 and 1 <= len(top) <= 3
        assert top[token] == pytest.approx(value)  # greedy: the chosen token is the most likely


def test_chat_logprobs_shape_streamed(api):
    chunks = list(api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                              logprobs=True, top_logprobs=2, stream=True,
                                              extra_body={"ignore_eos": True}))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 5
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2 and entry.bytes == list(entry.token.encode())


def test_documents_pass_through_to_the_frontend(cluster, api):
    # the text may differ from the gRPC run's: the second run reuses the chunks' KV (approximate, blended)
    documents = ["The river starts in the mountains.", "It ends in the sea."]
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                      extra_body={"documents": documents, "ignore_eos": True})
    expected = grpc_result(cluster, prompt=PROMPT, documents=documents, max_tokens=6, ignore_eos=True)
    assert response.usage.prompt_tokens == expected.final.prompt_tokens > len(PROMPT.split()) + 10
    assert response.usage.completion_tokens == 6


BAD = [
    (dict(n=17), 400, "n"),
    (dict(max_tokens=0), 400, None),
    (dict(temperature=-1), 400, None),
    (dict(logprobs=99), 400, None),
    (dict(frequency_penalty=2.5), 400, None),
    (dict(logit_bias={"five": 1}), 400, "logit_bias"),
    (dict(logit_bias={"1000000": 1}), 400, None),  # past the vocabulary
    (dict(extra_body={"priority": 2**31}), 400, "priority"),
    (dict(model="gpt-4"), 404, "model"),
]


@pytest.mark.parametrize("override, status, param", BAD)
def test_bad_requests_get_openai_errors(cluster, api, override, status, param):
    kwargs = dict(model=MODEL, prompt=PROMPT, max_tokens=4) | override
    with pytest.raises(openai.APIStatusError) as err:
        api.completions.create(**kwargs)
    assert err.value.status_code == status
    body = err.value.body
    assert set(body) >= {"message", "type", "param", "code"} and body["message"]
    assert body["param"] == param


def test_malformed_unknown_and_oversized_requests(cluster):
    status, body = http_json(cluster.http_url + "/v1/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = http_json(cluster.http_url + "/v1/chat/completions", json.dumps({"messages": []}).encode())
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = http_json(cluster.http_url + "/v1/nothing-here")
    assert status == 404 and "message" in body["error"]
    big = json.dumps({"prompt": "x" * MAX_BODY, "max_tokens": 1}).encode()
    status, body = http_json(cluster.http_url + "/v1/completions", big)
    assert status == 413 and body["error"]["code"] == "request_too_large"


def test_api_description_is_open_when_auth_is_off(cluster):
    status, schema = http_json(cluster.http_url + "/openapi.json")
    assert status == 200 and {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(schema["paths"])
    for page in ("/docs", "/redoc"):
        with urllib.request.urlopen(cluster.http_url + page, timeout=10) as response:
            assert response.status == 200 and b"/openapi.json" in response.read()


def test_health_reports_nodes_and_requests(cluster):
    status, body = http_json(cluster.http_url + "/health")
    assert status == 200 and body["status"] == "ok" and body["healthy_nodes"] == 2
    assert http_json(cluster.http_url + "/ping") == (200, body)
    assert http_json(cluster.http_url + "/version") == (200, {"version": splitserve.__version__})


def test_metrics_are_served_and_count_refusals(cluster):
    http_json(cluster.http_url + "/v1/completions", json.dumps({"prompt": "x", "n": 99}).encode())
    with urllib.request.urlopen(cluster.http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'splitserve_router_request_errors_total{code="INVALID_ARGUMENT"}' in text


def _settled(cluster) -> bool:
    def idle():
        return (http_json(cluster.http_url + "/health")[1]["requests_in_flight"] == 0
                and all(node_stats(n.address).num_running == 0 for _, n in cluster.nodes))
    return wait_until(idle, timeout_s=1.5, interval_s=0.05)


@pytest.mark.parametrize("n", [1, 2])
def test_http_disconnect_cancels_the_request_on_the_nodes(cluster, api, n):
    # 1900 tokens take seconds on the tiny model: finishing within the wait means it was cancelled
    with api.completions.with_streaming_response.create(
            model=MODEL, prompt=PROMPT, max_tokens=1900, temperature=0, stream=True, n=n,
            extra_body={"ignore_eos": True}) as response:
        data = (line for line in response.iter_lines() if line.startswith("data:"))
        for _ in range(3):
            assert '"text"' in next(data)
    start = time.monotonic()
    assert _settled(cluster), "the request kept running after the client left"
    assert time.monotonic() - start < 1.5
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address)


def test_grpc_cancel_cancels_the_request_on_the_nodes(cluster):
    channel = grpc.insecure_channel(cluster.router.address)
    call = router_pb2_grpc.RouterStub(channel).Generate(build_request(prompt=PROMPT, max_tokens=1900, ignore_eos=True))
    for _ in range(3):
        next(call)
    call.cancel()
    channel.close()
    assert _settled(cluster)
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address)


def test_grpc_client_deadline_cancels_the_request(cluster):
    with Client(cluster.url, timeout_s=0.3) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.complete(prompt=PROMPT, max_tokens=1900, ignore_eos=True)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _settled(cluster)


def test_a_lora_adapter_is_a_model_of_its_own(cluster, api, tiny_model, lora):
    """vLLM's multi-LoRA: /v1/models lists the adapter with the base model as its parent; naming it runs the
    adapter on both nodes (the in-process engine with the adapter says what comes, and it is not the base model's);
    requests of the adapter and of the base model decode side by side; pooled endpoints refuse it."""
    from splitserve.engine import EngineConfig

    card = next(m for m in api.models.list().data if m.id == LORA)
    assert card.model_extra["parent"] == MODEL and api.models.retrieve(LORA).id == LORA
    engine = Engine(tiny_model, EngineConfig(lora_modules=((LORA, str(lora)),)))
    frontend = Frontend.from_model_dir(tiny_model)
    chat_ids = frontend.prompt_ids(messages=MESSAGES)
    params = dict(max_tokens=12, temperature=0.9, seed=3)
    expected = {name: engine.generate([chat_ids], SamplingParams(**params, lora=name))[0].text for name in (None, LORA)}
    assert expected[None] != expected[LORA]

    async def both() -> list:
        async with openai.AsyncOpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(client.chat.completions.create(model=name, messages=MESSAGES, **params)
                                          for name in (LORA, MODEL, LORA, MODEL)))
    answers = asyncio.run(both())
    assert [a.choices[0].message.content for a in answers] == [expected[LORA], expected[None]] * 2
    assert answers[0].model == LORA
    completion = api.completions.create(model=LORA, prompt=PROMPT, max_tokens=8, temperature=0)
    reference = engine.generate([engine.tokenizer.encode(PROMPT)], SamplingParams(max_tokens=8, lora=LORA))[0]
    assert completion.choices[0].text == reference.text
    with Client(cluster.url, timeout_s=60) as client:
        assert client.complete(prompt=PROMPT, max_tokens=8, lora=LORA).text == reference.text
        with pytest.raises(grpc.RpcError, match="unknown LoRA adapter 'nope'; the cluster serves 'tiny-lora'"):
            client.complete(prompt=PROMPT, max_tokens=8, lora="nope")
    metrics = urllib.request.urlopen(cluster.http_url + "/metrics", timeout=30).read().decode()
    served = [line for line in metrics.splitlines() if line.startswith(f'splitserve_router_lora_requests_total{{adapter="{LORA}"}}')]
    assert served and float(served[0].split()[-1]) >= 4
    with pytest.raises(openai.BadRequestError, match="is a LoRA adapter; it serves generation only"):
        api.embeddings.create(model=LORA, input="a river")
    with pytest.raises(openai.NotFoundError, match=f"or '{LORA}'"):
        api.completions.create(model="nope", prompt=PROMPT, max_tokens=2)


def post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["error"]["message"]


def test_lora_adapters_load_and_unload_at_runtime(cluster, api, tiny_model, tmp_path):
    """vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter (--allow-runtime-lora): every node loads the folder,
    the adapter is a model at once and runs on both nodes; a taken name or an adapter that does not load changes
    nothing; once unloaded, its name is unknown again."""
    from splitserve.engine import EngineConfig

    folder = write_peft_adapter(tiny_model, tmp_path / "late", seed=9, targets=("q_proj", "up_proj"))
    load, unload = cluster.http_url + "/v1/load_lora_adapter", cluster.http_url + "/v1/unload_lora_adapter"
    assert post(load, {"lora_name": "late", "lora_path": str(folder)}) == (
        200, "Success: LoRA adapter 'late' added successfully.")
    assert [m.id for m in api.models.list().data] == [MODEL, "late", LORA]  # adapters sorted by name
    expected = Engine(tiny_model, EngineConfig(lora_modules=(("late", str(folder)),))).generate(
        [Frontend.from_model_dir(tiny_model).prompt_ids(prompt=PROMPT)], SamplingParams(max_tokens=8, lora="late"))
    assert api.completions.create(model="late", prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text == \
        expected[0].text
    assert post(load, {"lora_name": LORA, "lora_path": str(folder)}) == (
        400, f"the LoRA adapter '{LORA}' has already been loaded")
    status, message = post(load, {"lora_name": "broken", "lora_path": str(tmp_path / "missing")})
    assert status == 400 and "missing: no such LoRA adapter" in message
    assert post(load, {"lora_name": "a b", "lora_path": str(folder)})[0] == 400
    assert "broken" not in [m.id for m in api.models.list().data]
    assert post(unload, {"lora_name": "late"}) == (200, "Success: LoRA adapter 'late' removed successfully.")
    assert post(unload, {"lora_name": "late"}) == (404, "no node serves a LoRA adapter 'late'")
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="late", prompt=PROMPT, max_tokens=2)


def test_a_gguf_lora_file_serves_as_the_peft_folder_it_came_from(cluster, api, tiny_model):
    """A GGUF LoRA file llama.cpp's converter wrote (tests/data/lora), loaded at runtime on every node, answers
    as the in-process engine does with the PEFT folder it was converted from."""
    from splitserve.engine import EngineConfig

    fixtures = Path(__file__).resolve().parent.parent / "data" / "lora" / "tiny"
    load, unload = cluster.http_url + "/v1/load_lora_adapter", cluster.http_url + "/v1/unload_lora_adapter"
    assert post(load, {"lora_name": "from-gguf", "lora_path": str(fixtures / "adapter-f32.gguf")})[0] == 200
    expected = Engine(tiny_model, EngineConfig(lora_modules=(("peft", str(fixtures / "peft")),))).generate(
        [Frontend.from_model_dir(tiny_model).prompt_ids(prompt=PROMPT)], SamplingParams(max_tokens=8, lora="peft"))
    answer = api.completions.create(model="from-gguf", prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    assert answer == expected[0].text
    assert answer != api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    assert post(unload, {"lora_name": "from-gguf"})[0] == 200


def test_a_node_that_restarts_gets_the_runtime_adapters_back(cluster, api, tiny_model):
    """A node killed and started again knows only its own --lora-modules; the router loads the adapters it loaded at
    runtime onto it again as soon as its Stats show them missing, and the adapter answers as before."""
    from splitserve.localcluster.procs import kill
    from tests.support.cluster import node_stats, wait_until

    folder = Path(__file__).resolve().parent.parent / "data" / "lora" / "tiny" / "peft"
    load = cluster.http_url + "/v1/load_lora_adapter"
    assert post(load, {"lora_name": "kept", "lora_path": str(folder)})[0] == 200
    before = api.completions.create(model="kept", prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    decode = next(s for r, s in cluster.nodes if r == "decode")
    kill(decode)
    decode.proc.wait(timeout=10)
    fresh = cluster.restart_node(decode)
    assert wait_until(lambda: "kept" in node_stats(fresh.address).lora_adapters, timeout_s=30)

    def answer() -> str | None:  # 503 until the router's own view of the node (its next Stats) lists the adapter
        try:
            return api.completions.create(model="kept", prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
        except openai.InternalServerError:
            return None
    assert wait_until(lambda: answer() is not None, timeout_s=30, interval_s=0.5)
    assert answer() == before
    assert post(cluster.http_url + "/v1/unload_lora_adapter", {"lora_name": "kept"})[0] == 200


def test_prompt_logprobs_come_as_vllm_sends_them_and_match_hf(cluster, api, tiny_model):
    """vLLM's prompt_logprobs: completions carry them in each choice, chat at the top of the response; per prompt
    token after the first, {token id: {logprob, rank, decoded_token}} of the token itself and of the top k, as HF's
    forward pass over the prompt has them. Streaming with them, -1 and an echo asking for another k are 400s."""
    import torch

    from tests.support.hf_reference import assert_rank, hf_prompt_logprobs

    frontend, model = Frontend.from_model_dir(tiny_model), hf_model(str(tiny_model))
    completion = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, n=2, temperature=0,
                                        extra_body={"prompt_logprobs": 3})
    chat = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, temperature=0,
                                       extra_body={"prompt_logprobs": 3})
    scored = [(frontend.prompt_ids(prompt=PROMPT), c.prompt_logprobs) for c in completion.choices]
    scored.append((frontend.prompt_ids(messages=MESSAGES), chat.prompt_logprobs))
    for ids, entries in scored:
        reference = hf_prompt_logprobs(model, ids)
        assert len(entries) == len(ids) and entries[0] is None
        for ref, token, entry in zip(reference, ids[1:], entries[1:]):
            own = entry[str(token)]
            assert abs(own["logprob"] - ref[token].item()) < 1e-3
            assert_rank(own["rank"], ref, token)
            assert own["decoded_token"] == frontend.tokenizer.decode([token], skip_special_tokens=False)
            assert {int(t) for t, v in entry.items() if v["rank"] <= 3} == set(torch.topk(ref, 3).indices.tolist())
    for extra, message in (({"prompt_logprobs": 1, "stream": True}, "not available when stream is true"),
                           ({"prompt_logprobs": -1}, "prompt_logprobs must be in"),
                           ({"prompt_logprobs": 2, "echo": True, "logprobs": 1}, "send one, or the same number")):
        status, body = http_json(cluster.http_url + "/v1/completions",
                                 json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 2, **extra}).encode())
        assert status == 400 and message in body["error"]["message"]
        assert body["error"]["param"] == "prompt_logprobs"


def test_add_special_tokens_as_vllm_takes_it(cluster, api, tiny_model):
    """vLLM's add_special_tokens: a completions prompt gets the tokenizer's BOS unless it is false (a prompt rendered
    by the client's own template already has one); a chat prompt gets it only when it is true (its template has
    its own). The answer is the one the prompt's own ids give over gRPC, where GenerateRequest.add_special_tokens
    does the same."""
    tokenizer, bos = Frontend.from_model_dir(tiny_model).tokenizer, 0  # the tiny model's BOS
    with_bos, without = tokenizer.encode(PROMPT), tokenizer.encode(PROMPT, add_special_tokens=False)
    assert with_bos == [bos] + without
    for add, ids in ((True, with_bos), (False, without)):
        choice = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                        extra_body={"add_special_tokens": add, "return_token_ids": True}).choices[0]
        assert choice.prompt_token_ids == ids
        assert choice.text == grpc_result(cluster, prompt_token_ids=ids, max_tokens=4).text
        over_grpc = grpc_result(cluster, prompt=PROMPT, max_tokens=4, add_special_tokens=add)  # GenerateRequest's
        assert (over_grpc.text, over_grpc.final.prompt_tokens) == (choice.text, len(ids))
    chat_ids = tokenizer.encode_chat(MESSAGES)
    for add, ids in ((False, chat_ids), (True, tokenizer.encode_chat(MESSAGES, add_special_tokens=True))):
        reply = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                            extra_body={"add_special_tokens": add, "return_token_ids": True})
        assert reply.prompt_token_ids == ids
    assert ids == [bos] + chat_ids  # the tokenizer's BOS in front of the template's own


def test_sagemaker_invocations_answer_as_the_api_the_body_is_for(cluster, api):
    """POST /invocations (SageMaker's contract, as vLLM serves it) answers a chat, a completions (streamed too) or an
    embeddings body as its own route does; a body naming no API is a 400."""
    url = cluster.http_url + "/invocations"
    chat = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, "temperature": 0}
    status, body = http_json(url, json.dumps(chat).encode())
    assert status == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == \
        api.chat.completions.create(**chat).choices[0].message.content
    completion = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "temperature": 0}
    status, body = http_json(url, json.dumps(completion).encode())
    assert status == 200 and body["choices"][0]["text"] == api.completions.create(**completion).choices[0].text
    request = urllib.request.Request(url, data=json.dumps({**completion, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert events[-1] == "data: [DONE]"
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == body["choices"][0]["text"]
    status, body = http_json(url, json.dumps({"model": MODEL, "input": "hello"}).encode())
    assert status == 200 and body["object"] == "list" and len(body["data"][0]["embedding"]) > 0
    status, body = http_json(url, json.dumps({"model": MODEL, "text": "x"}).encode())
    assert status == 400 and "an invocation carries messages" in body["error"]["message"]
