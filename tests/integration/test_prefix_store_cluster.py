"""The prefix store in real nodes (`--prefix-store-url`, a real redis-server, tiny model, the official `openai`
client, round robin so that a prompt's second request lands on the other node): the second node reads the prompt's
blocks the first one stored instead of computing them, and answers as the engine does. Disaggregated (2 prefill + 1
decode: the prefill nodes share) and colocated (2 mixed nodes). A conversation's next turn also reads the answer's
blocks, which the decode or mixed node that generated them stored."""

from __future__ import annotations

import time

import openai
import pytest

from splitserve.engine import Engine, SamplingParams
from tests.support.cluster import ParallelCluster
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.slow
PROMPT = " ".join(f"Passage {i}: the river passes the mill, the bridge and the old town gate." for i in range(12))


@pytest.mark.parametrize("shape", [dict(prefill=2, decode=1), dict(prefill=0, decode=0, colocated=2)],
                         ids=["disaggregated", "colocated"])
def test_the_other_node_reads_the_prompt_from_the_store_and_answers_as_the_engine(tiny_model, redis_url, shape):
    engine = Engine(tiny_model)
    prompt_ids = engine.tokenizer.encode(PROMPT)
    [expected] = engine.generate([prompt_ids], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    args = ["--prefix-store-url", redis_url, "--metrics-port=-1"]
    with ParallelCluster(tiny_model, http_port=-1, policy="round_robin", node_args=args, **shape) as cluster:
        client = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        answers = [client.completions.create(model=tiny_model.name, prompt=PROMPT, max_tokens=12, temperature=0,
                                             extra_body={"ignore_eos": True}) for _ in range(2)]
        sharing = [node for role, node in cluster.nodes if role in ("prefill", "mixed")]
        samples = [scrape(f"http://{node.extra['metrics']}/metrics") for node in sharing]
    assert [a.choices[0].text for a in answers] == [expected.text] * 2
    stored = [value(s, "splitserve_prefix_store_stored_tokens_total") for s in samples]
    hits = [value(s, "splitserve_prefix_store_hit_tokens_total") for s in samples]
    full_blocks = (len(prompt_ids) - 1) // 16 * 16
    answer_blocks = (len(prompt_ids) + 11) // 16 * 16 - full_blocks  # a mixed node stores what its answer filled
    computed = full_blocks + (answer_blocks if "colocated" in shape else 0)
    assert sorted(stored) == [0, computed] and sorted(hits) == [0, full_blocks]
    assert stored.index(computed) != hits.index(full_blocks)  # one node computed and stored, the other read
    assert answers[1].usage.prompt_tokens_details.cached_tokens >= full_blocks


def stored_tokens(node) -> float:
    return value(scrape(f"http://{node.extra['metrics']}/metrics"), "splitserve_prefix_store_stored_tokens_total")


@pytest.mark.parametrize("shape", [dict(prefill=2, decode=1), dict(prefill=0, decode=0, colocated=2)],
                         ids=["disaggregated", "colocated"])
def test_the_next_turn_reads_the_answer_the_node_that_generated_it_stored(tiny_model, redis_url, shape):
    """Turn 2 sends turn 1's prompt and answer back (a conversation): on the other prefill (or mixed) node, the
    answer's blocks are read too, stored by the decode (or mixed) node that generated them."""
    engine = Engine(tiny_model)
    turn1 = engine.tokenizer.encode(PROMPT)
    turn1 = turn1[:len(turn1) // 16 * 16]  # its last token ends a block: the prefill node does not store that block
    params = dict(max_tokens=40, temperature=0, extra_body={"ignore_eos": True})
    [answer] = engine.generate([turn1], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    turn2 = turn1 + answer.token_ids + engine.tokenizer.encode(" And what comes after the gate?")
    [expected] = engine.generate([turn2], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    args = ["--prefix-store-url", redis_url, "--metrics-port=-1"]
    with ParallelCluster(tiny_model, http_port=-1, policy="round_robin", node_args=args, **shape) as cluster:
        client = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        first = client.completions.create(model=tiny_model.name, prompt=turn1, **params)
        generating = [node for role, node in cluster.nodes if role in ("decode", "mixed")]
        answer_blocks = (len(turn1) + 39) // 16 - (len(turn1) - 1) // 16
        deadline = time.monotonic() + 30
        while sum(stored_tokens(n) for n in generating) < 16 * answer_blocks and time.monotonic() < deadline:
            time.sleep(0.1)  # stored off the request's path
        second = client.completions.create(model=tiny_model.name, prompt=turn2, **params)
    assert first.choices[0].text == answer.text and second.choices[0].text == expected.text
    assert second.usage.prompt_tokens_details.cached_tokens == (len(turn1) + 39) // 16 * 16
