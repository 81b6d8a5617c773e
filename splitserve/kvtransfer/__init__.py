"""Moving a request's KV cache from a prefill node to a decode node, layer by layer.

    sender = make_sender("torch", "decode-host:29500", TransferConfig())     # prefill node, per decode node
    receiver = make_receiver("torch", TransferConfig(), host="0.0.0.0", port=29500)  # decode node

What the services exchange before a transfer (router: Reserve on the decode node, then
Prefill on the prefill node):

- the request id (the router's), and the same `TransferMeta` built on both nodes from the
  model config, the prompt length, the dtype and the checksum setting;
- the decode node's KV address for the prefill node's `make_sender(backend, address)`:
  torch - "<advertised host>:<kv port>" (the port of `receiver.address`); grpc - the decode
  node's gRPC address when the servicer sits on its own server (`grpc_server=`).
  Nothing else: a torch pair group names itself after the sender's instance id.
- `expect` must run before the prefill node's `begin` (Reserve returns first).

See `base` for the interface and the states, `torch_pair` for how pair groups form, `wire`
for what travels. Backends: `torch` (torch.distributed point-to-point: gloo on CPU, NCCL on
CUDA) and `grpc` (client-streaming PushKV); `loopback` is the in-process fake for tests. Nodes name a
transport (`transport_backend`): a backend, or `gloo`, the torch backend on host copies.
"""

from __future__ import annotations

from splitserve.labels import KV_TRANSPORTS
from splitserve.kvtransfer.pool_copy import gather_checksummed, scatter_checksummed, scatter_layer
from splitserve.kvtransfer.wire import checksum_seed, joined_layers
from splitserve.kvtransfer.base import (
    DTYPES,
    KVReceiver,
    KVSender,
    RecvState,
    SendState,
    TransferConfig,
    TransferError,
    TransferInfo,
    TransferMeta,
    WriteHashed,
    WriteLayer,
)

_SENDERS = {
    "torch": ("splitserve.kvtransfer.torch_sender", "TorchSender"),
    "grpc": ("splitserve.kvtransfer.grpc_sender", "GrpcSender"),
    "loopback": ("splitserve.kvtransfer.loopback", "LoopbackSender"),
}
_RECEIVERS = {
    "torch": ("splitserve.kvtransfer.torch_receiver", "TorchReceiver"),
    "grpc": ("splitserve.kvtransfer.grpc_receiver", "GrpcReceiver"),
    "loopback": ("splitserve.kvtransfer.loopback", "LoopbackReceiver"),
}
BACKENDS = ("torch", "grpc")  # across processes; "loopback" is the in-process fake


def transport_backend(transport: str, device: str) -> tuple[str, str]:
    """(backend, the device its tensors are on) for a node's transport (labels.KV_TRANSPORTS: what
    nodes name on their flags and in KVTarget) and engine device. torch on a CUDA node moves CUDA
    tensors over NCCL, on a CPU node CPU tensors over gloo; gloo is the torch backend kept on gloo,
    moving host copies (CUDA nodes that share a GPU, or have no NCCL); grpc takes tensors on the
    engine's device and copies them."""
    if transport not in KV_TRANSPORTS:
        raise ValueError(f"KV transport must be one of {', '.join(KV_TRANSPORTS)}, got {transport!r}")
    on_device = device if device.startswith("cuda") else "cpu"
    return ("torch", "cpu") if transport == "gloo" else (transport, on_device)


def _load(table: dict, backend: str):
    import importlib

    if backend not in table:
        raise KeyError(f"unknown KV transfer backend {backend!r}; supported: {', '.join(sorted(table))}")
    module, name = table[backend]
    return getattr(importlib.import_module(module), name)


def make_sender(backend: str, address: str, config: TransferConfig | None = None, **kwargs) -> KVSender:
    """A sender to the decode node at `address` (its receiver's `address`).

    kwargs: torch `instance_id` (default: a fresh uuid); grpc `credentials`.
    """
    return _load(_SENDERS, backend)(address, config or TransferConfig(), **kwargs)


def make_receiver(backend: str, config: TransferConfig | None = None, **kwargs) -> KVReceiver:
    """A receiver; kwargs: `host`, `port` (0: any free port), grpc `grpc_server` (serve on it)."""
    return _load(_RECEIVERS, backend)(config or TransferConfig(), **kwargs)


__all__ = [
    "BACKENDS", "DTYPES", "KVReceiver", "KVSender", "RecvState", "SendState", "TransferConfig",
    "TransferError", "TransferInfo", "TransferMeta", "WriteHashed", "WriteLayer", "checksum_seed", "gather_checksummed",
    "joined_layers", "make_receiver", "make_sender", "scatter_checksummed", "scatter_layer",
    "transport_backend",
]
