"""The real model (SmolLM2-135M-Instruct) through real clusters: the disaggregated path on both KV
transports equals the single-process engine for concurrent chat requests; a decode node killed
mid-stream costs nothing; the official `openai` client gets the text `generate --chat` prints (chat
completions, the Responses API, whose follow-up turn sees the first, and Anthropic's Messages API)."""

import asyncio
import contextlib
import functools
import io
import json

import pytest

from splitserve.client import AsyncClient
from splitserve.engine import Engine, SamplingParams
from tests.integration.test_router_failover import running_decode
from tests.support.cluster import ParallelCluster, used_blocks_settle_to_zero

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "How many legs does a spider have?",
             "Write a haiku about rain.", "What is 7 times 8?", "Who wrote Hamlet?", "Explain gravity in one sentence.",
             "Translate 'good morning' into Spanish."]
MAX_TOKENS = 24
NODE_ARGS = ["--transfer-timeout-s=60", "--one-shot-max-tokens=16"]


def chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def sampling(i: int, seeded: bool) -> dict:
    return dict(max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.95, seed=100 + i) if seeded else dict(max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def engine(smollm2_model):
    return Engine(smollm2_model)


@pytest.fixture(scope="module")
def reference(engine):
    """reference(seeded): the single-process engine's tokens for QUESTIONS, computed once per module."""
    @functools.cache
    def tokens(seeded: bool) -> list[list[int]]:
        prompts = [engine.tokenizer.encode_chat(chat(q)) for q in QUESTIONS]
        params = [SamplingParams(**sampling(i, seeded)) for i in range(len(QUESTIONS))]
        return [r.token_ids for r in engine.generate(prompts, params)]
    return tokens


@pytest.fixture(scope="module")
def generate_chat_text(smollm2_model) -> str:
    """What `splitserve generate --chat --json` prints for QUESTIONS[0] (the CLI's handler, run in this process once)."""
    from splitserve.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["generate", "--model", str(smollm2_model), "--chat", "--prompt", QUESTIONS[0],
                     "--max-tokens", str(MAX_TOKENS), "--json"]) == 0
    return json.loads(out.getvalue().splitlines()[-1])["text"]


async def ask_all(url: str, seeded: bool):
    async with AsyncClient(url, timeout_s=300) as client:
        return await asyncio.gather(*(client.complete(messages=chat(q), **sampling(i, seeded))
                                      for i, q in enumerate(QUESTIONS)))


@pytest.fixture(scope="module", params=["torch", "grpc"])
def cluster(request, smollm2_model):
    with ParallelCluster(smollm2_model, prefill=1, decode=1, transport=request.param, node_args=NODE_ARGS,
                         router_args=["--http-port=-1"]) as c:
        yield c


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_8_concurrent_chat_requests_equal_the_engine(cluster, reference, seeded):
    results = asyncio.run(ask_all(cluster.url, seeded))
    assert [r.token_ids for r in results] == reference(seeded)
    assert all(r.final.prefill_node != r.final.decode_node for r in results)
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address, timeout_s=30)


def test_openai_chat_equals_generate_chat(cluster, smollm2_model, generate_chat_text):
    from openai import OpenAI

    client = OpenAI(base_url=cluster.http_url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model=smollm2_model.name, messages=chat(QUESTIONS[0]), temperature=0,
                                           max_completion_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == generate_chat_text


def test_openai_responses_conversation(cluster, smollm2_model, generate_chat_text):
    """The Responses API's answer is the chat answer, and a turn after `previous_response_id` sees the first."""
    from openai import OpenAI

    client = OpenAI(base_url=cluster.http_url + "/v1", api_key="unused")
    first = client.responses.create(model=smollm2_model.name, input=QUESTIONS[0], temperature=0,
                                    max_output_tokens=MAX_TOKENS)
    assert first.output_text == generate_chat_text
    second = client.responses.create(model=smollm2_model.name, input="And of Germany?", temperature=0,
                                     previous_response_id=first.id, max_output_tokens=MAX_TOKENS)
    assert "Berlin" in second.output_text


def test_anthropic_messages_equal_generate_chat(cluster, smollm2_model, generate_chat_text):
    import anthropic

    client = anthropic.Anthropic(base_url=cluster.http_url, api_key="unused")
    message = client.messages.create(model=smollm2_model.name, max_tokens=MAX_TOKENS, messages=chat(QUESTIONS[0]),
                                     extra_body={"temperature": 0})
    assert message.content[0].text == generate_chat_text


WEATHER = [{"role": "system", "content": "To call a function, write <function=NAME>{JSON arguments}</function>.\n"
                                         "Functions: get_weather(city, unit)."},
           {"role": "user", "content": "Weather in Rome?"},
           {"role": "assistant", "content": '<function=get_weather>{"city": "Rome"}</function>'},
           {"role": "user", "content": "How hot is it in Paris, in fahrenheit?"}]
WEATHER_TAG = {"type": "structural_tag", "triggers": ["<function="], "structures": [{
    "begin": "<function=get_weather>", "end": "</function>", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}]}


def test_a_structural_tag_holds_the_models_own_call_format_to_its_schema(cluster, smollm2_model):
    """vLLM's structural tags: SmolLM2 writes its call in the format it was shown, but with arguments of its own
    making; held to the schema between the tags, it writes the call the schema asks for."""
    from openai import OpenAI

    client = OpenAI(base_url=cluster.http_url + "/v1", api_key="unused")
    ask = functools.partial(client.chat.completions.create, model=smollm2_model.name, messages=WEATHER,
                            temperature=0, max_completion_tokens=40)
    assert ask().choices[0].message.content == '<function=get_weather>{"temperature": "77.8F"}</function>'
    constrained = ask(response_format=WEATHER_TAG).choices[0]
    assert constrained.message.content == '<function=get_weather>{"city": "Paris", "unit": "fahrenheit"}</function>'
    assert constrained.finish_reason == "stop"


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_decode_node_killed_mid_stream_changes_nothing(smollm2_model, reference, seeded):
    from splitserve.client import Client
    from splitserve.localcluster.procs import kill

    with ParallelCluster(smollm2_model, prefill=1, decode=2, node_args=NODE_ARGS + ["--fault-step-delay-s=0.05"],
                         router_args=["--http-port=0", "--health-interval-s=0.2"]) as c:
        tokens, victim = [], None
        with Client(c.url, timeout_s=300) as client:
            for event in client.generate(messages=chat(QUESTIONS[0]), **sampling(0, seeded)):
                tokens += getattr(event, "token_ids", [])
                if victim is None and len(tokens) >= 4:
                    victim = running_decode(c)
                    kill(victim)
        assert victim is not None and event.decode_node != victim.address
    assert tokens == reference(seeded)[0]
