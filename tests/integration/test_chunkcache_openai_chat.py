"""Chat messages with `documents` over the OpenAI HTTP API (the official `openai` client) through a
real cluster (prefill + decode, tiny model) and a real redis-server: the documents sit inside the
chat template's last user turn, misses are stored after the request's head, the same passages in
another order are blended (over HTTP and gRPC); bad combinations get 400s."""

from __future__ import annotations

import openai
import pytest

from router.front.intake import Frontend
from splitserve.client import Client
from splitserve.engine import Engine, SamplingParams
from tests.support.cluster import ParallelCluster, node_stats, wait_until

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Which bridge is oldest?"}]
DOCS = ["The stone bridge over the river was built in 1820 by the town.",
        "A wooden bridge stood there before it, until the flood of 1790.",
        "The iron railway bridge upstream dates from 1885."]


def test_chat_documents_over_http_are_cached_and_blended(tiny_model, redis_url):
    ids, _ = Frontend.from_model_dir(tiny_model).prompt_and_chunks(messages=MESSAGES, documents=DOCS)
    expected = Engine(tiny_model).generate([ids], SamplingParams(max_tokens=6, ignore_eos=True))[0]
    with ParallelCluster(tiny_model, prefill=1, decode=1, http_port=-1, redis_url=redis_url,
                      node_args=["--transfer-timeout-s=10"]) as cluster:
        prefill = next(s.address for role, s in cluster.nodes if role == "prefill")
        with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60) as api:
            ask = lambda docs, messages=MESSAGES: api.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=6, temperature=0,
                extra_body={"documents": docs, "ignore_eos": True})
            first = ask(DOCS)
            assert first.usage.prompt_tokens == len(ids) and first.usage.prompt_tokens_details.cached_tokens == 0
            assert first.choices[0].message.content == expected.text  # every chunk missed: the plain path
            assert wait_until(lambda: node_stats(prefill).chunk_cache.num_local_chunks == 3, 30)
            blended = ask(DOCS[::-1])
            assert blended.usage.prompt_tokens == len(ids) and blended.usage.completion_tokens == 6
            assert blended.usage.prompt_tokens_details.cached_tokens > 0
            stats = node_stats(prefill).chunk_cache
            assert stats.blended_requests == 1 and stats.local_hits == 3
            with Client(cluster.url, timeout_s=60) as client:  # the gRPC Generate path: same prompt, same chunks
                result = client.complete(messages=MESSAGES, documents=DOCS[1:] + DOCS[:1], max_tokens=2)
            assert result.final.prompt_tokens == len(ids) and result.final.cached_tokens > 0

            for messages, docs, match in ((MESSAGES[:1], DOCS, "last message, which must be from the user"),
                                          (MESSAGES, ["a", ""], "non-empty")):
                with pytest.raises(openai.BadRequestError, match=match):
                    ask(docs, messages)
            with pytest.raises(openai.BadRequestError, match="not with prompt token ids"):
                api.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=2, extra_body={"documents": DOCS})
