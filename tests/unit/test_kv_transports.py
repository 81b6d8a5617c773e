"""The transport a decode node names decides the prefill node's sender: its backend, and the device
its tensors are on (`gloo`: the torch backend on host copies, for CUDA nodes sharing a GPU)."""

import pytest

from prefill_node.senders import SenderPool
from splitserve.kvtransfer import TransferConfig, transport_backend
from splitserve.kvtransfer.grpc_sender import GrpcSender
from splitserve.kvtransfer.torch_sender import TorchSender
from splitserve.node_api import KVTarget


@pytest.mark.parametrize("transport, device, expected", [
    ("torch", "cpu", ("torch", "cpu")), ("torch", "cuda:1", ("torch", "cuda:1")),
    ("gloo", "cuda:1", ("torch", "cpu")), ("gloo", "cpu", ("torch", "cpu")),
    ("grpc", "cuda", ("grpc", "cuda")), ("grpc", "cpu", ("grpc", "cpu")),
])
def test_transport_backend(transport, device, expected):
    assert transport_backend(transport, device) == expected


def test_an_unknown_transport_is_refused_by_name():
    with pytest.raises(ValueError, match="one of torch, gloo, grpc"):
        transport_backend("nccl", "cuda")


def test_a_cuda_prefill_node_sends_host_copies_to_a_gloo_decode_node_and_device_tensors_to_the_others():
    pool = SenderPool("prefill-a", TransferConfig(), engine_device="cuda:0")
    try:
        gloo = pool.get(KVTarget("decode-a", "127.0.0.1:1", "gloo"))
        nccl = pool.get(KVTarget("decode-b", "127.0.0.1:2", "torch"))
        grpc = pool.get(KVTarget("decode-c", "127.0.0.1:3", "grpc"))
        assert isinstance(gloo, TorchSender) and gloo.device == "cpu"
        assert isinstance(nccl, TorchSender) and nccl.device == "cuda:0"
        assert isinstance(grpc, GrpcSender) and grpc.device == "cuda:0"
        assert pool.get(KVTarget("decode-a", "127.0.0.1:1", "gloo")) is gloo
        with pytest.raises(ValueError, match="KV transport"):
            pool.get(KVTarget("decode-d", "127.0.0.1:4", "ucx"))
    finally:
        pool.close()
