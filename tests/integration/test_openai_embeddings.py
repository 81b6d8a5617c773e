"""OpenAI's embeddings API (`/v1/embeddings`) and the router's gRPC Embed against a real local cluster
(router + prefill + decode + a mixed node, tiny model), with the official `openai` client. The reference
is the engine in this process (itself held to HF transformers' last_hidden_state in
tests/unit/test_embeddings.py): the same texts give the same vectors, whether the client asks for
floats or for base64 (its default), from a prefill node and, once that node is killed (last test), from
the mixed node; decode nodes refuse the call. Scores and reranking (vLLM's /v1/score, Jina's and
Cohere's rerank, the latter with the official `cohere` client) follow the engine's cosine similarity."""

from __future__ import annotations

import json

import grpc
import openai
import pytest
import torch

from splitserve.api.v1 import node_pb2, router_pb2
from splitserve.client import Client, embed_request
from splitserve.engine import Engine, EngineConfig, PoolingParams
from splitserve.localcluster.procs import kill
from tests.integration.test_openai_http import http_json
from tests.support.cluster import ParallelCluster, node_stub
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
TEXTS = ["The river starts in the mountains.", "Where is the sea?", "a", "Zwei Flüsse treffen sich hier."]


@pytest.fixture(scope="module")
def cluster(tiny_model):
    with ParallelCluster(tiny_model, prefill=1, decode=1, colocated=1, http_port=-1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def api(cluster):
    with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(num_blocks=64))


def expected(engine, texts, **pooling) -> list[list[float]]:
    return engine.embed(texts, PoolingParams(**pooling))


def assert_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.allclose(torch.tensor(g), torch.tensor(w), atol=1e-5)


def test_texts_equal_the_engine_as_floats_and_as_base64(cluster, api, engine):
    before = scrape(cluster.http_url + "/metrics")
    floats = api.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    after = scrape(cluster.http_url + "/metrics")
    grown = {"splitserve_router_embeddings_total": 4, "splitserve_router_embedding_latency_seconds_count": 4,
             "splitserve_router_embedding_tokens_total": floats.usage.prompt_tokens}
    for name, grown in grown.items():
        assert value(after, name) - value(before, name) == grown, name
    assert [d.index for d in floats.data] == [0, 1, 2, 3] and floats.model == MODEL
    assert_close([d.embedding for d in floats.data], expected(engine, TEXTS))
    num_tokens = sum(len(engine.tokenizer.encode(t)) for t in TEXTS)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == num_tokens
    default = api.embeddings.create(model=MODEL, input=TEXTS)  # the client asks for base64 and decodes it
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    one = api.embeddings.create(model=MODEL, input=TEXTS[1])
    assert one.data[0].embedding == floats.data[1].embedding
    assert abs(sum(x * x for x in one.data[0].embedding) - 1.0) < 1e-5


def test_token_ids_mean_pooling_unnormalized_truncation_and_no_special_tokens(api, engine):
    ids = [engine.tokenizer.encode(t) for t in TEXTS[:2]]
    got = api.embeddings.create(model=MODEL, input=ids, encoding_format="float",
                                extra_body={"pooling": "mean", "normalize": False})
    assert_close([d.embedding for d in got.data], expected(engine, ids, kind="mean", normalize=False))
    cut = api.embeddings.create(model=MODEL, input=ids[0], extra_body={"truncate_prompt_tokens": 3})
    assert_close([cut.data[0].embedding], expected(engine, [ids[0][-3:]]))
    assert cut.usage.prompt_tokens == 3
    bare = api.embeddings.create(model=MODEL, input=TEXTS[0], extra_body={"add_special_tokens": False})  # vLLM's
    without_bos = engine.tokenizer.encode(TEXTS[0], add_special_tokens=False)
    assert len(without_bos) == len(ids[0]) - 1 and bare.usage.prompt_tokens == len(without_bos)
    assert_close([bare.data[0].embedding], expected(engine, [without_bos]))


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"), ({"input": []}, "input"), ({"input": [[]]}, None), ({"input": [5000]}, None),
    ({"input": "x", "dimensions": 8}, "dimensions"), ({"input": "x", "pooling": "cls"}, "pooling"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"), ({"input": "x", "truncate_prompt_tokens": 0},
                                                                    "truncate_prompt_tokens"),
    ({"input": ["x"] * 2049}, "input"), ({"input": list(range(2, 4000))}, None),
    ({"input": "x", "priority": 2**31}, "priority"),
])
def test_bad_input_is_a_400_naming_it(cluster, body, param):
    status, reply = http_json(cluster.http_url + "/v1/embeddings", json.dumps({"model": MODEL, **body}).encode())
    assert status == 400, reply
    assert reply["error"]["param"] == param


def test_an_unknown_model_is_a_404(api):
    with pytest.raises(openai.NotFoundError):
        api.embeddings.create(model="other", input="x")


def test_grpc_embed_equals_http_and_decode_nodes_refuse(cluster, api, engine):
    ids = engine.tokenizer.encode(TEXTS[0])
    http = api.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float").data[0].embedding
    with Client(cluster.url, timeout_s=60) as client:
        assert client.embed([TEXTS[0], ids]) == [http, http]
        assert client.embed([TEXTS[0]], priority=-3) == [http]  # a priority orders the work, the vector is the same
        assert api.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float",
                                     extra_body={"priority": 2}).data[0].embedding == http
        mean = client.embed([ids], pooling="mean", normalize=False)
        assert_close(mean, expected(engine, [ids], kind="mean", normalize=False))
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.Embed(router_pb2.EmbedRequest(inputs=[router_pb2.EmbedInput()]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = client.stub.Embed(embed_request([ids, ids]))
        assert reply.usage.prompt_tokens == 2 * len(ids)
    decode = next(s for role, s in cluster.nodes if role == "decode")
    with pytest.raises(grpc.RpcError) as refused:
        node_stub(decode.address)[1].Embed(node_pb2.NodeEmbedRequest(request_id="x", prompt_token_ids=ids))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_score_pairs_by_cosine_similarity(cluster, engine):
    vectors = dict(zip(TEXTS, expected(engine, TEXTS)))
    status, one_to_many = http_json(cluster.http_url + "/v1/score",
                                    json.dumps({"model": MODEL, "text_1": TEXTS[0], "text_2": TEXTS[1:]}).encode())
    assert status == 200, one_to_many
    assert [d["index"] for d in one_to_many["data"]] == [0, 1, 2]
    for d, text in zip(one_to_many["data"], TEXTS[1:]):
        assert abs(d["score"] - cosine(vectors[TEXTS[0]], vectors[text])) < 1e-5
    status, pairwise = http_json(cluster.http_url + "/v1/score",
                                 json.dumps({"text_1": TEXTS[:2], "text_2": TEXTS[2:]}).encode())
    assert [round(d["score"], 5) for d in pairwise["data"]] == \
        [round(cosine(vectors[a], vectors[b]), 5) for a, b in zip(TEXTS[:2], TEXTS[2:])]
    status, refused = http_json(cluster.http_url + "/v1/score",
                                json.dumps({"text_1": TEXTS[:2], "text_2": TEXTS[:3]}).encode())
    assert status == 400 and refused["error"]["param"] == "text_1"
    status, prioritized = http_json(cluster.http_url + "/v1/score", json.dumps(
        {"text_1": TEXTS[:2], "text_2": TEXTS[2:], "priority": -2}).encode())  # the order of work, not the scores
    assert status == 200 and prioritized["data"] == pairwise["data"]
    for path in ("/v1/score", "/v1/rerank"):
        body = {"text_1": "a", "text_2": "b"} if path == "/v1/score" else {"query": "a", "documents": ["b"]}
        status, refused = http_json(cluster.http_url + path, json.dumps(body | {"priority": 2**31}).encode())
        assert status == 400 and refused["error"]["param"] == "priority"


def test_cohere_client_reranks_by_the_engines_similarity(cluster, engine):
    import cohere

    query, documents = TEXTS[1], TEXTS[:1] + TEXTS[2:]
    vectors = expected(engine, [query] + documents)
    order = sorted(range(len(documents)), key=lambda i: -cosine(vectors[0], vectors[i + 1]))
    co = cohere.ClientV2(api_key="unused", base_url=cluster.http_url, timeout=60, max_retries=0)
    reply = co.rerank(model=MODEL, query=query, documents=documents, top_n=2)
    assert [r.index for r in reply.results] == order[:2]
    assert abs(reply.results[0].relevance_score - cosine(vectors[0], vectors[order[0] + 1])) < 1e-5
    with pytest.raises(cohere.core.api_error.ApiError) as refused:
        co.rerank(model=MODEL, query=query, documents=[])
    assert refused.value.status_code == 400
    # Jina's path and shape: documents as objects, returned unless asked not to
    status, jina = http_json(cluster.http_url + "/rerank", json.dumps({
        "model": MODEL, "query": query, "documents": [{"text": d} for d in documents]}).encode())
    assert status == 200 and [r["index"] for r in jina["results"]] == order
    assert [r["document"]["text"] for r in jina["results"]] == [documents[i] for i in order]
    status, bare = http_json(cluster.http_url + "/v1/rerank", json.dumps({
        "query": query, "documents": documents, "return_documents": False}).encode())
    assert status == 200 and "document" not in bare["results"][0]


def test_with_the_prefill_node_dead_the_mixed_node_answers(cluster, api, engine):
    before = api.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    kill(next(s for role, s in cluster.nodes if role == "prefill"))
    after = api.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert_close([d.embedding for d in after.data], [d.embedding for d in before.data])
