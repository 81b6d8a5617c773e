"""Runtime LoRA updating across the cluster: vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, which the
router serves with --allow-runtime-lora (router/front/lora_api.py).

Loading asks every healthy node (all roles: the prefill and the decode node of a request both run its adapter) to
read the folder from its own disk; if one cannot, the others unload it again, so an adapter is served by all the
healthy nodes or by none. Unloading asks every node that lists it: new requests may no longer name it, the ones
it already has run to their end on it. Either way the router then re-reads the nodes' Stats, so `/v1/models` and
routing see the change at once.

The router keeps what it loaded (`RuntimeAdapters`): a node that joins later, or restarts and comes back without
them, gets each loaded as soon as its Stats show it missing (after every background refresh); one that cannot
load it (its disk lacks the path) is asked again every `retry_s`. Until then the router routes an adapter's
requests only to nodes that list it. What another router loaded, or this one before it restarted, is not known.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from router.cluster.nodes import NodeRegistry
from router.cluster.policies import NoRoute
from splitserve.api.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)


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


class RuntimeAdapters:
    """The adapters this router loaded at runtime (name -> path), kept loaded on every healthy node."""

    def __init__(self, registry: NodeRegistry, timeout_s: float, retry_s: float = 30.0):
        self.registry, self.timeout_s, self.retry_s = registry, timeout_s, retry_s
        self.paths: dict[str, str] = {}
        self._loading: set[tuple[str, str]] = set()  # (node, name) asked now
        self._retry_at: dict[tuple[str, str], float] = {}  # (node, name) that failed -> when to ask again
        self._tasks: set[asyncio.Task] = set()
        registry.on_refresh.append(self.reconcile)

    async def load(self, name: str, path: str) -> None:
        await load_everywhere(self.registry, name, path, self.timeout_s)
        self.paths[name] = path

    async def unload(self, name: str) -> None:
        self.paths.pop(name, None)  # first: no node gets it back meanwhile
        await unload_everywhere(self.registry, name, self.timeout_s)

    def reconcile(self) -> None:
        """Asks each healthy node that lacks one of the adapters to load it (not waiting for the answers)."""
        now = time.monotonic()
        for node in self.registry.snapshot():
            for name, path in self.paths.items():
                key = (node.address, name)
                if node.healthy and name not in node.lora_adapters and key not in self._loading \
                        and self._retry_at.get(key, 0.0) <= now:
                    self._loading.add(key)
                    task = asyncio.get_running_loop().create_task(self._load_on(node.address, name, path))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _load_on(self, address: str, name: str, path: str) -> None:
        key = (address, name)
        try:
            error = await _call(self.registry, address, "LoadLoraAdapter", name, path, self.timeout_s)
            if error is not None:
                self._retry_at[key] = time.monotonic() + self.retry_s
                log.warning("a node cannot load a runtime LoRA adapter; asking again in %.0f s: %s", self.retry_s,
                            error.details(), extra={"node": address, "adapter": name})
                return
            self._retry_at.pop(key, None)
            if name in self.paths:
                log.info("LoRA adapter loaded on a node that lacked it", extra={"node": address, "adapter": name})
            else:  # unloaded while this node loaded it
                await _call(self.registry, address, "UnloadLoraAdapter", name, "", self.timeout_s)
            await self.registry.refresh()
        finally:
            self._loading.discard(key)


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
