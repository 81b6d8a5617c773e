"""N-gram speculative decoding through a real cluster on the real model (SmolLM2-135M-Instruct): a prefill and a
decode node started with `--speculative-config`, asked over HTTP by the official `openai` client (streaming, so
several tokens of one step come out together), answer what the single-process engine without speculation
answers, greedy and seeded; the decode node's metrics count the drafts it checked and kept."""

import pytest

from splitserve.engine import Engine, SamplingParams
from tests.support.cluster import ParallelCluster, used_blocks_settle_to_zero
from tests.support.metrics import scrape, value
from tests.unit.test_speculation import QUOTED

pytestmark = pytest.mark.slow
SPECULATIVE = '--speculative-config={"method": "ngram", "num_speculative_tokens": 3}'
QUESTIONS = [f"Repeat this text exactly:\n\n{QUOTED}", f"{QUOTED}\n\nWho is the tower named after?"]
SAMPLING = [dict(max_tokens=48, temperature=0), dict(max_tokens=32, temperature=0.8, top_p=0.95, seed=5)]


def chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def test_speculative_decode_node_answers_as_the_engine_without_it(smollm2_model):
    from openai import OpenAI

    engine = Engine(smollm2_model)
    prompts = [engine.tokenizer.encode_chat(chat(q)) for q in QUESTIONS]
    expected = [r.text for r in engine.generate(prompts, [SamplingParams(**s) for s in SAMPLING])]
    with ParallelCluster(smollm2_model, prefill=1, decode=1, node_args=[SPECULATIVE, "--metrics-port=-1"],
                         router_args=["--http-port=-1"]) as cluster:
        client = OpenAI(base_url=cluster.http_url + "/v1", api_key="unused")
        answers = []
        for question, sampling in zip(QUESTIONS, SAMPLING):
            stream = client.chat.completions.create(model=smollm2_model.name, messages=chat(question), stream=True,
                                                    **sampling)
            answers.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        decode = next(node for role, node in cluster.nodes if role == "decode")
        samples = scrape(f"http://{decode.extra['metrics']}/metrics")
        assert used_blocks_settle_to_zero(decode.address)
    assert answers == expected
    drafted = value(samples, "splitserve_spec_decode_draft_tokens_total")
    kept = value(samples, "splitserve_spec_decode_accepted_tokens_total")
    assert kept > 10 and kept <= drafted, (kept, drafted)
