"""The disaggregated path with real processes: router + prefill + decode nodes over gRPC, KV over
torch.distributed (gloo) or gRPC. Outputs must equal the single-process engine's, token for token."""

import asyncio
import functools

import grpc
import pytest

from splitserve.api.v1 import common_pb2, node_pb2
from splitserve.client import Client
from splitserve.engine import Engine, SamplingParams
from tests.support.cluster import (ParallelCluster, mixed_prompts, node_stats, node_stub, reference, send_all,
                                   used_blocks_settle_to_zero)

pytestmark = pytest.mark.slow
NODE_ARGS = ["--one-shot-max-tokens=64", "--kv-checksum", "--transfer-timeout-s=10"]


@pytest.fixture(scope="module", params=["torch", "grpc"])
def cluster(request, tiny_model):
    with ParallelCluster(tiny_model, prefill=1, decode=1, transport=request.param, node_args=NODE_ARGS) as c:
        yield c


@functools.cache
def expected(model_dir, num_prompts: int, seed: int, seeded: bool) -> list[list[int]]:
    """The single-process engine's tokens for mixed_prompts(num_prompts, seed), once per module run."""
    return reference(model_dir, mixed_prompts(num_prompts, seed=seed), seeded)


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_16_concurrent_prompts_equal_the_single_process_engine(cluster, tiny_model, seeded):
    prompts = mixed_prompts(16)
    results = asyncio.run(send_all(cluster.url, prompts, seeded))
    assert [r.token_ids for r in results] == expected(tiny_model, 16, 0, seeded)
    assert all(r.final.prefill_node != r.final.decode_node for r in results)
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address)


def test_a_one_token_answer_comes_from_the_prefill_node_alone(cluster, tiny_model):
    """max_tokens 1 (a classifier, a scoring run, a beam-search step): the prefill node's first token is the answer,
    so the router asks it alone (Generate): no KV reserved, moved or decoded. Asked for more, it refuses."""
    prompts = mixed_prompts(6, seed=5)
    with Client(cluster.url, timeout_s=60) as client:
        results = [client.complete(prompt_token_ids=p, max_tokens=1, ignore_eos=True) for p in prompts]
    expected = Engine(tiny_model).generate(prompts, SamplingParams(max_tokens=1, ignore_eos=True))
    assert [r.token_ids for r in results] == [e.token_ids for e in expected]
    assert all(r.final.decode_node == r.final.prefill_node for r in results)
    prefill = next(n.address for role, n in cluster.nodes if role == "prefill")
    channel, stub = node_stub(prefill)
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(node_pb2.NodeGenerateRequest(request_id="two", prompt_token_ids=prompts[0],
                                                            sampling=common_pb2.SamplingParams(max_tokens=2)), timeout=10))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "one-token" in err.value.details()
    finally:
        channel.close()


def test_the_next_turn_moves_only_the_kv_the_decode_node_lacks(cluster, tiny_model):
    """Turn 2 repeats turn 1's prompt and answer: the decode node's Reserve takes those blocks from its prefix cache
    (the reply says how many tokens), the prefill node sends the KV of the rest, and the tokens are the engine's."""
    decode = next(n.address for role, n in cluster.nodes if role == "decode")
    prefill = next(n.address for role, n in cluster.nodes if role == "prefill")
    assert node_stats(prefill).sends_partial_kv and not node_stats(decode).sends_partial_kv
    first = mixed_prompts(16, seed=9)[13]  # 400 tokens
    with Client(cluster.url, timeout_s=60) as client:
        answer = client.complete(prompt_token_ids=first, max_tokens=12, ignore_eos=True).token_ids
        second = first + answer + [5, 6, 7]
        channel, stub = node_stub(decode)
        try:
            probe = stub.Reserve(node_pb2.ReserveRequest(request_id="probe", num_prompt_tokens=len(second),
                                                         prompt_token_ids=second), timeout=10)
            stub.Abort(common_pb2.AbortRequest(request_id="probe"), timeout=10)
        finally:
            channel.close()
        assert probe.num_cached_tokens == (len(first) + len(answer) - 1) // 16 * 16  # the last answer token: not fed
        turn2 = client.complete(prompt_token_ids=second, max_tokens=8, ignore_eos=True)
    assert turn2.final.prefill_node != turn2.final.decode_node == decode
    (expected_turn2,) = Engine(tiny_model).generate([second], SamplingParams(max_tokens=8, ignore_eos=True))
    assert turn2.token_ids == expected_turn2.token_ids
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address)


BAD_REQUESTS = [
    (dict(prompt=""), "empty"),
    (dict(prompt_token_ids=[10**6]), "token ids"),
    (dict(prompt="hi", max_tokens=0), "max_tokens"),
    (dict(prompt="hi", top_p=2.0), "top_p"),
    (dict(prompt="hi", temperature=-1.0), "temperature"),
    (dict(prompt_token_ids=[7] * 2040, max_tokens=16), "context length"),
]


@pytest.mark.parametrize("kwargs, message", BAD_REQUESTS)
def test_bad_requests_get_invalid_argument_and_the_cluster_keeps_serving(cluster, kwargs, message):
    with Client(cluster.url, timeout_s=30) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.complete(**{"max_tokens": 4, **kwargs})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
        assert len(client.complete(prompt="still serving", max_tokens=3, ignore_eos=True).token_ids) == 3


@pytest.mark.parametrize("prefill, decode", [(1, 2), (2, 1)])
def test_groups_form_on_demand_with_several_nodes(tiny_model, prefill, decode):
    prompts = mixed_prompts(24, seed=3)
    with ParallelCluster(tiny_model, prefill=prefill, decode=decode, node_args=NODE_ARGS) as c:
        results = asyncio.run(send_all(c.url, prompts, seeded=True))
        nodes = [n.address for _, n in c.nodes]
        used = [node_stats(a).num_used_blocks for a in nodes] if all(used_blocks_settle_to_zero(a) for a in nodes) else None
    assert [r.token_ids for r in results] == expected(tiny_model, 24, 3, True)
    assert len({r.final.prefill_node for r in results}) == prefill
    assert len({r.final.decode_node for r in results}) == decode
    assert used == [0] * len(nodes)


def test_a_full_decode_pool_answers_resource_exhausted_and_recovers(tiny_model):
    with ParallelCluster(tiny_model, prefill=1, decode=1, node_args=["--num-blocks=8", "--block-size=16"]) as c:
        with Client(c.url, timeout_s=30) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.complete(prompt_token_ids=[9] * 300, max_tokens=4)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "KV blocks" in err.value.details()
            assert len(client.complete(prompt_token_ids=[9] * 20, max_tokens=4, ignore_eos=True).token_ids) == 4
        for _, node in c.nodes:
            assert used_blocks_settle_to_zero(node.address)


def test_the_gloo_transport_moves_host_copies_and_equals_the_single_process_engine(tiny_model):
    """`--transport gloo`: the torch backend kept on gloo (on CUDA nodes, through host memory); on
    this CPU machine the same bytes as `torch`, reached through the transport's own name."""
    prompts = mixed_prompts(8, seed=11)
    with ParallelCluster(tiny_model, prefill=1, decode=1, transport="gloo", node_args=NODE_ARGS) as c:
        results = asyncio.run(send_all(c.url, prompts, seeded=False))
        targets = {node_stats(a).transport for a in [n.address for role, n in c.nodes if role == "decode"]}
    assert [r.token_ids for r in results] == expected(tiny_model, 8, 11, False)
    assert targets == {"gloo"}


@pytest.mark.parametrize("transport", ["torch", "grpc"])
def test_a_16_bit_kv_cache_equals_the_single_process_engine_and_a_mismatch_is_named(tiny_model, transport):
    """--kv-cache-dtype float16 on both nodes: the KV travels (gloo or gRPC) and decodes in float16, and the answers
    are the single-process engine's with the same cache. A decode node restarted with bfloat16 (the same bytes a token) is
    refused by name (once: the refusal is the prefill node's, whatever the transport), not fed the other dtype's
    bits."""
    from splitserve.localcluster.procs import kill
    from tests.support.cluster import wait_until

    prompts = mixed_prompts(8, seed=13)
    with ParallelCluster(tiny_model, prefill=1, decode=1, transport=transport,
                         node_args=[*NODE_ARGS, "--kv-cache-dtype=float16"]) as c:
        results = asyncio.run(send_all(c.url, prompts, seeded=False))
        _assert_float16_answers(tiny_model, prompts, results)
        if transport == "grpc":
            return
        decode = next(n for role, n in c.nodes if role == "decode")
        kill(decode)
        decode.proc.wait(timeout=10)
        c.node_args = [*NODE_ARGS, "--kv-cache-dtype=bfloat16"]
        c.restart_node(decode)

        def refusal() -> str:
            with Client(c.url, timeout_s=30) as client:
                try:
                    client.complete(prompt_token_ids=prompts[0], max_tokens=4)
                except Exception as exc:  # noqa: BLE001 - what the client says is what is checked
                    return str(exc)
            return "answered"
        assert wait_until(lambda: "keeps its KV cache in bfloat16, this prefill node in float16" in refusal(),
                          timeout_s=30, interval_s=0.5), refusal()


def _assert_float16_answers(tiny_model, prompts, results) -> None:
    from splitserve.engine import EngineConfig

    expected_tokens = reference(tiny_model, prompts, False, EngineConfig(kv_cache_dtype="float16"))
    assert [r.token_ids for r in results] == expected_tokens
