"""gRPC fuzzing against real processes: random bytes and hostile values to every RPC of the router
and of each node. Each call ends with a clear status or a valid reply; after each test every
process is alive, a normal request completes and no KV block stays used."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitserve.api.v1 import common_pb2, node_pb2, router_pb2
from tests.fuzz import strategies as fs
from tests.fuzz.harness import NODE, NODE_METHODS, ROUTER, ROUTER_METHODS, assert_healthy, call, fuzz_settings, node, \
    push_kv

pytestmark = pytest.mark.slow
TARGETS = [("router", ROUTER + m, stream) for m, stream in ROUTER_METHODS.items()] + \
          [(role, NODE + m, stream) for role in ("prefill", "decode", "mixed") for m, stream in NODE_METHODS.items()]


def _address(cluster, role: str) -> str:
    return cluster.url if role == "router" else node(cluster, role).address


def _finished(replies: list[bytes]) -> bool:
    return router_pb2.GenerateResponse.FromString(replies[-1]).HasField("final")


@fuzz_settings(max_examples=100)
@given(target=st.sampled_from(TARGETS), payload=fs.raw_bytes)
def test_random_bytes_to_every_rpc(cluster, target, payload):
    role, method, stream = target
    outcome = call(_address(cluster, role), method, payload, stream)
    assert outcome.is_clear(), (role, method, outcome)


def test_random_bytes_leave_the_cluster_healthy(cluster):
    assert_healthy(cluster)


@fuzz_settings(max_examples=8)
@given(chunks=st.lists(fs.raw_bytes, min_size=1, max_size=3))
def test_random_bytes_as_kv_chunks(cluster, chunks):
    outcome = push_kv(node(cluster, "decode").address, chunks)
    assert outcome.is_clear() or outcome.code == grpc.StatusCode.DATA_LOSS, outcome


@fuzz_settings(max_examples=80)
@given(request=fs.generate_requests())
def test_hostile_values_through_the_router(cluster, request):
    outcome = call(cluster.url, ROUTER + "Generate", request.SerializeToString(), stream=True)
    assert outcome.is_clear(), outcome
    assert outcome.code != grpc.StatusCode.OK or _finished(outcome.replies)


id_lists = st.builds(router_pb2.TokenIds, ids=fs.token_ids)
embed_inputs = st.lists(st.one_of(st.builds(router_pb2.EmbedInput, text=fs.text),
                                  st.builds(router_pb2.EmbedInput, token_ids=id_lists),
                                  st.just(router_pb2.EmbedInput())), max_size=3)
poolings = st.sampled_from(["", "last", "mean", "cls", "\x00"])


@fuzz_settings(max_examples=40)
@given(request=st.builds(router_pb2.EmbedRequest, inputs=embed_inputs, pooling=poolings, no_normalize=st.booleans()))
def test_hostile_embed_requests_through_the_router(cluster, request):
    outcome = call(cluster.url, ROUTER + "Embed", request.SerializeToString())
    assert outcome.is_clear(), outcome


def test_hostile_values_leave_the_cluster_healthy(cluster):
    assert_healthy(cluster)


spans = st.lists(st.builds(node_pb2.ChunkSpan, start=fs.uint32, length=fs.uint32), max_size=3)
node_generate = st.builds(node_pb2.NodeGenerateRequest, request_id=fs.request_ids, prompt_token_ids=fs.token_ids,
                          sampling=fs.sampling, num_prior_output_tokens=fs.uint32, chunks=spans)
targets = st.builds(node_pb2.KVTarget, node_id=fs.text, transport=st.sampled_from(["", "grpc", "torch", "zzz"]),
                    kv_address=st.sampled_from(["", "nonsense", "127.0.0.1:1", "127.0.0.1:99999", "[::1]:0"]))
prefills = st.builds(node_pb2.PrefillRequest, request_id=fs.request_ids, prompt_token_ids=fs.token_ids,
                     sampling=fs.sampling, target=targets, num_prior_output_tokens=fs.uint32, chunks=spans,
                     num_target_cached_tokens=fs.uint32)
reserves = st.builds(node_pb2.ReserveRequest, request_id=fs.request_ids, num_prompt_tokens=fs.uint32,
                     prefill_node_id=fs.text, prompt_token_ids=fs.token_ids, cache_salt=fs.text)
decodes = st.builds(node_pb2.DecodeRequest, request_id=fs.request_ids, prompt_token_ids=fs.token_ids,
                    first_token_id=fs.uint32, sampling=fs.sampling, num_prior_output_tokens=fs.uint32)
ingests = st.builds(node_pb2.IngestRequest, documents=fs.documents, in_context=st.booleans())
embeds = st.builds(node_pb2.NodeEmbedRequest, request_id=fs.request_ids, prompt_token_ids=fs.token_ids,
                   pooling=poolings, no_normalize=st.booleans())
NODE_CALLS = {"mixed": [("Generate", node_generate, True), ("IngestDocuments", ingests, False),
                        ("Embed", embeds, False)],
              "prefill": [("Prefill", prefills, False), ("IngestDocuments", ingests, False), ("Embed", embeds, False)],
              "decode": [("Reserve", reserves, False), ("Decode", decodes, True)]}


@fuzz_settings(max_examples=80)
@given(data=st.data(), role=st.sampled_from(sorted(NODE_CALLS)))
def test_hostile_values_to_the_nodes(cluster, data, role):
    method, requests, stream = data.draw(st.sampled_from(NODE_CALLS[role]))
    request = data.draw(requests)
    address = node(cluster, role).address
    outcome = call(address, NODE + method, request.SerializeToString(), stream)
    assert outcome.is_clear(), (method, outcome)
    if method == "Reserve" and outcome.code == grpc.StatusCode.OK:  # free it now rather than at its expiry
        call(address, NODE + "Abort", common_pb2.AbortRequest(request_id=request.request_id).SerializeToString())


def test_node_fuzzing_leaves_the_cluster_healthy(cluster):
    assert_healthy(cluster)
