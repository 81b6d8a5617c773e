"""Runtime LoRA updating across the cluster: vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, which the
router serves with --allow-runtime-lora (router/front/lora_api.py).

Loading asks every healthy node (all roles: the prefill and the decode node of a request both run its adapter) to
read the folder from its own disk; if one cannot, the others unload it again, so an adapter is served by all the
healthy nodes or by none. Unloading asks every node that lists it: new requests may no longer name it, the ones
it already has run to their end on it. Either way the router then re-reads the nodes' Stats, so `/v1/models` and
routing see the change at once. A node that joins later serves only its own --lora-modules: the router routes an
adapter's requests only to nodes that list it.
"""

from __future__ import annotations

import asyncio

import grpc

from router.cluster.nodes import NodeRegistry
from router.cluster.policies import NoRoute
from splitserve.api.v1 import node_pb2, node_pb2_grpc


class LoraUpdateError(Exception):
    """A node refused or failed; `code` is its status (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


async def load_everywhere(registry: NodeRegistry, name: str, path: str, timeout_s: float) -> None:
    """Every healthy node serves `path` as `name`, or none does; NoRoute without a healthy node."""
    nodes = _healthy(registry)
    outcomes = await asyncio.gather(*(_call(registry, a, "LoadLoraAdapter", name, path, timeout_s) for a in nodes))
    failures = [(address, exc) for address, exc in zip(nodes, outcomes) if exc is not None]
    if failures:
        loaded = [address for address, exc in zip(nodes, outcomes) if exc is None]
        await asyncio.gather(*(_call(registry, a, "UnloadLoraAdapter", name, "", timeout_s) for a in loaded))
        address, exc = failures[0]
        raise LoraUpdateError(exc.code(), f"node {address}: {exc.details()}")
    await registry.refresh()


async def unload_everywhere(registry: NodeRegistry, name: str, timeout_s: float) -> None:
    """Every node listing `name` stops serving it; LoraUpdateError NOT_FOUND when none lists it, or the first
    node that failed (the others have unloaded it)."""
    nodes = [n.address for n in registry.snapshot() if name in n.lora_adapters]
    if not nodes:
        raise LoraUpdateError(grpc.StatusCode.NOT_FOUND, f"no node serves a LoRA adapter {name!r}")
    outcomes = await asyncio.gather(*(_call(registry, a, "UnloadLoraAdapter", name, "", timeout_s) for a in nodes))
    await registry.refresh()
    failures = [(address, exc) for address, exc in zip(nodes, outcomes)
                if exc is not None and exc.code() != grpc.StatusCode.NOT_FOUND]
    if failures:
        address, exc = failures[0]
        raise LoraUpdateError(exc.code(), f"node {address}: {exc.details()}")


def _healthy(registry: NodeRegistry) -> list[str]:
    nodes = [n.address for n in registry.snapshot() if n.healthy]
    if not nodes:
        raise NoRoute("no healthy node to load the adapter on")
    return nodes


async def _call(registry: NodeRegistry, address: str, method: str, name: str, path: str,
                timeout_s: float) -> grpc.aio.AioRpcError | None:
    """The node's error, or None when it did it."""
    try:
        stub = node_pb2_grpc.NodeStub(registry.channel(address))
        await getattr(stub, method)(node_pb2.LoraAdapterRequest(name=name, path=path), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        return exc
    except KeyError:  # the node left meanwhile
        return None
    return None
