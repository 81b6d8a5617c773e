"""Prompt logprobs and grammars over gRPC on a colocated (mixed) node: prompt logprobs of concurrent prompts
against HF transformers' forward pass, and a prompt whose documents are in the chunk cache is still computed
whole for them; a grammar holds on a blended prefill's first token too (the disaggregated path, `echo` and
`response_format` over HTTP are tested in test_openai_http.py)."""

from __future__ import annotations

import asyncio

import pytest

from router.front.intake import Frontend
from splitserve.client import AsyncClient, Client
from splitserve.engine.grammar import json_schema_grammar
from splitserve.localcluster.cluster import LocalCluster
from tests.support.cluster import mixed_prompts, wait_until
from tests.support.hf_reference import assert_prompt_logprobs_match_hf, hf_model
from tests.unit.test_grammar import SCHEMA, _valid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tiny_model):
    with LocalCluster(tiny_model, prefill=0, decode=0, colocated=1) as c:
        yield c


async def _score(url: str, prompts: list[list[int]]):
    async with AsyncClient(url, timeout_s=120) as client:
        return await asyncio.gather(*(client.complete(prompt_token_ids=p, max_tokens=3, prompt_logprobs=4)
                                      for p in prompts))


def test_concurrent_prompts_equal_hf(cluster, tiny_model):
    prompts = mixed_prompts(8, seed=5)
    model = hf_model(str(tiny_model))
    for prompt, result in zip(prompts, asyncio.run(_score(cluster.url, prompts))):
        assert_prompt_logprobs_match_hf(prompt, result.prompt_logprobs, model)
        assert len(result.token_ids) >= 1


def test_documents_in_the_chunk_cache_are_computed_whole(cluster, tiny_model):
    documents = ["The Danube flows through ten countries.", "The Volga is the longest river in Europe."]
    question = "Which river is longer?"
    with Client(cluster.url, timeout_s=60) as client:
        assert wait_until(lambda: client.complete(prompt=question, documents=documents, max_tokens=1).final.cached_tokens,
                          30)
        scored = client.complete(prompt=question, documents=documents, max_tokens=1, prompt_logprobs=1)
    ids = Frontend.from_model_dir(tiny_model).prompt_ids(prompt=question, documents=documents)
    assert scored.final.cached_tokens == 0
    assert_prompt_logprobs_match_hf(ids, scored.prompt_logprobs, hf_model(str(tiny_model)))


def test_a_grammar_holds_on_a_blended_prefill(cluster):
    documents = ["Red is the colour of blood.", "Twelve is a dozen."]
    grammar = json_schema_grammar(SCHEMA)
    with Client(cluster.url, timeout_s=60) as client:
        assert wait_until(lambda: client.complete(prompt="Pick one.", documents=documents, max_tokens=1).final.cached_tokens,
                          30)
        results = [client.complete(prompt="Pick one.", documents=documents, max_tokens=40, grammar=grammar,
                                   temperature=1.0, seed=seed) for seed in range(3)]
    assert all(r.final.cached_tokens > 0 for r in results)  # blended: the first token sampled by the chunk path
    assert all(r.final.finish_reason == "stop" and _valid(r.text) for r in results), [r.text for r in results]
