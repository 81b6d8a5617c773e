"""The disaggregated path on one CUDA device (skipped without a GPU): router + prefill + decode
node processes with the model on CUDA and the KV from CUDA tensors to CUDA tensors over gRPC or
over gloo through host memory (the torch transport's CUDA path is NCCL, which needs two devices:
the last test). Outputs must equal the single-process engine's on CUDA, token for token."""

import asyncio

import pytest
import torch

from splitserve.client import Client
from splitserve.engine import Engine, EngineConfig, SamplingParams
from tests.support.cluster import ParallelCluster, mixed_prompts, request_kwargs, send_all, used_blocks_settle_to_zero

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
NODE_ARGS = ["--device=cuda", "--one-shot-max-tokens=64", "--kv-checksum", "--transfer-timeout-s=20"]
LAYOUTS = {"1p1d-grpc": dict(prefill=1, decode=1, transport="grpc"), "1p1d-gloo": dict(prefill=1, decode=1, transport="gloo"),
           "colocated": dict(prefill=0, decode=0, colocated=1, transport="grpc")}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def cluster(request, tiny_model):
    with ParallelCluster(tiny_model, node_args=NODE_ARGS, **LAYOUTS[request.param]) as c:
        yield c


@pytest.fixture(scope="module")
def cuda_engine(tiny_model):
    return Engine(tiny_model, EngineConfig(device="cuda"))


def one_by_one(engine: Engine, prompts, seeded: bool) -> list[list[int]]:
    return [engine.generate([p], SamplingParams(**request_kwargs(i, seeded)))[0].token_ids for i, p in enumerate(prompts)]


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_prompts_sent_one_by_one_equal_the_single_process_engine_on_cuda(cluster, cuda_engine, seeded):
    prompts = mixed_prompts(8, seed=5)
    with Client(cluster.url, timeout_s=60) as client:
        got = [client.complete(prompt_token_ids=p, **request_kwargs(i, seeded)).token_ids for i, p in enumerate(prompts)]
    assert got == one_by_one(cuda_engine, prompts, seeded)
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address)


def test_16_concurrent_prompts_equal_the_engine_given_them_at_once(cluster, cuda_engine):
    prompts = mixed_prompts(16)
    results = asyncio.run(send_all(cluster.url, prompts, False))
    expected = cuda_engine.generate(prompts, [SamplingParams(**request_kwargs(i, False)) for i in range(len(prompts))])
    assert [r.token_ids for r in results] == [e.token_ids for e in expected]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per node")
def test_kv_over_nccl_between_two_gpus_equals_the_single_process_engine(tiny_model, cuda_engine):
    prompts = mixed_prompts(8, seed=7)
    with ParallelCluster(tiny_model, prefill=1, decode=1, transport="torch", node_args=NODE_ARGS[1:],
                         devices=["cuda:0", "cuda:1"]) as cluster:
        with Client(cluster.url, timeout_s=60) as client:
            got = [client.complete(prompt_token_ids=p, **request_kwargs(i, False)).token_ids for i, p in enumerate(prompts)]
    assert got == one_by_one(cuda_engine, prompts, False)
