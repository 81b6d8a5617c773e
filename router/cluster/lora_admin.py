"""Runtime LoRA updating across the cluster: vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, which the
router serves with --allow-runtime-lora (router/front/lora_api.py).

Loading asks every healthy node (all roles: the prefill and the decode node of a request both run its adapter) to
read the folder from its own disk; if one cannot, the others unload it again, so an adapter is served by all the
healthy nodes or by none. Unloading asks every node that lists it: new requests may no longer name it, the ones
it already has run to their end on it. Either way the router then re-reads the nodes' Stats, so `/v1/models` and
routing see the change at once.

The router records what was loaded in its store (`RuntimeAdapters` over lora_store.py: this router's memory, or
Redis shared by the router replicas): a node that joins later, or restarts and comes back without them, gets each
loaded as soon as its Stats show it missing (after every background refresh, by whichever router sees it first);
one that cannot load it (its disk lacks the path) is asked again every `retry_s`. Until then the routers route an
adapter's requests only to nodes that list it. A node still listing an adapter unloaded lately (a load raced the
unload, or its unload failed) is asked to unload it, unless the node loaded it at start from its own --lora-modules
(restarted after the unload, it serves what its flags say, whenever it restarts).
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from router.cluster.lora_store import MemoryLoraStore
from router.cluster.nodes import NodeRegistry
from router.cluster.policies import NoRoute
from router.redis_client import StoreUnavailable
from splitserve.api.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 60.0  # a node reads an adapter's weights in this time


class LoraUpdateError(Exception):
    """A node refused or failed; `code` is its status (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


async def load_everywhere(registry: NodeRegistry, name: str, path: str, timeout_s: float) -> list[str]:
    """Every healthy node serves `path` as `name` (returned: their addresses), or none does; NoRoute without a
    healthy node."""
    nodes = _healthy(registry)
    outcomes = await asyncio.gather(*(_call(registry, a, "LoadLoraAdapter", name, path, timeout_s) for a in nodes))
    failures = [(address, exc) for address, exc in zip(nodes, outcomes) if exc is not None]
    if failures:
        await _unload_from(registry, [address for address, exc in zip(nodes, outcomes) if exc is None], name, timeout_s)
        address, exc = failures[0]
        raise LoraUpdateError(exc.code(), f"node {address}: {exc.details()}")
    await registry.refresh()
    return nodes


async def _unload_from(registry: NodeRegistry, nodes: list[str], name: str, timeout_s: float) -> None:
    await asyncio.gather(*(_call(registry, a, "UnloadLoraAdapter", name, "", timeout_s) for a in nodes))


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
    """The adapters loaded at runtime, kept on every healthy node by every router that shares `store`."""

    def __init__(self, registry: NodeRegistry, timeout_s: float, store=None, retry_s: float = 30.0):
        self.registry, self.timeout_s, self.retry_s = registry, timeout_s, retry_s
        self.store = store if store is not None else MemoryLoraStore()
        self._asked: set[tuple[str, str]] = set()  # (node, name) asked to load or unload now
        self._retry_at: dict[tuple[str, str], float] = {}  # (node, name) that failed -> when to ask again
        self._tasks: set[asyncio.Task] = set()
        self._store_down = False  # the store did not answer the last reconciling (said once, not every refresh)
        registry.on_refresh.append(self.reconcile)

    async def load(self, name: str, path: str) -> None:
        nodes = await load_everywhere(self.registry, name, path, self.timeout_s)
        try:
            await self.store.add(name, path)
        except StoreUnavailable:  # unrecorded, it would not come back to nodes that restart: none keeps it
            await _unload_from(self.registry, nodes, name, self.timeout_s)
            await self.registry.refresh()
            raise

    async def unload(self, name: str) -> None:
        await self.store.remove(name)  # first: no node gets it back meanwhile
        await unload_everywhere(self.registry, name, self.timeout_s)

    def reconcile(self) -> None:
        """Reads the store and, without waiting for the answers, asks each healthy node lacking one of its adapters to
        load it, and each node still listing one unloaded lately to unload it."""
        if not any(task.get_name() == "lora-reconcile" for task in self._tasks):
            self._start(self._reconcile(), "lora-reconcile")

    async def _reconcile(self) -> None:
        try:
            wanted = await self.store.read()
        except StoreUnavailable as exc:
            if not self._store_down:
                log.warning("runtime LoRA adapters not reconciled until the store answers: %s", exc)
            self._store_down = True
            return
        if self._store_down:
            log.info("the runtime LoRA store answers again; reconciling")
            self._store_down = False
        now = time.monotonic()
        for node in self.registry.snapshot():
            if not node.healthy:
                continue
            for name, path in wanted.paths.items():
                if name not in node.lora_adapters and self._claim(node.address, name, now):
                    self._start(self._load_on(node.address, name, path))
            for name in wanted.unloaded - wanted.paths.keys():
                if self._held_at_runtime(node, name) and self._claim(node.address, name, now):
                    self._start(self._unload_on(node.address, name))

    @staticmethod
    def _held_at_runtime(node, name: str) -> bool:
        """The node serves `name` and not from its own flags (those stay: a node restarted soon after an unload serves
        what its --lora-modules say, as it would later)."""
        return name in node.lora_adapters and name not in node.startup_lora_adapters

    def _claim(self, address: str, name: str, now: float) -> bool:
        """Whether to ask `address` about `name` now (not asked already, not failed within retry_s); marks it asked."""
        key = (address, name)
        if key in self._asked or self._retry_at.get(key, 0.0) > now:
            return False
        self._asked.add(key)
        return True

    def _start(self, work, name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load_on(self, address: str, name: str, path: str) -> None:
        key = (address, name)
        try:
            error = await _call(self.registry, address, "LoadLoraAdapter", name, path, self.timeout_s)
            await self.registry.refresh()
            if error is not None and not self._lists(address, name):  # listed: another router was there first
                self._retry_at[key] = time.monotonic() + self.retry_s
                log.warning("a node cannot load a runtime LoRA adapter; asking again in %.0f s: %s", self.retry_s,
                            error.details(), extra={"node": address, "adapter": name})
                return
            self._retry_at.pop(key, None)
            wanted = await self._still_wanted(name)
            if wanted:
                log.info("LoRA adapter loaded on a node that lacked it", extra={"node": address, "adapter": name})
            elif wanted is False and error is None:  # unloaded while this node loaded it
                await _call(self.registry, address, "UnloadLoraAdapter", name, "", self.timeout_s)
                await self.registry.refresh()
        finally:
            self._asked.discard(key)

    async def _unload_on(self, address: str, name: str) -> None:
        key = (address, name)
        try:
            if await self._still_wanted(name) is False:
                log.info("a node still held an unloaded LoRA adapter; unloading it",
                         extra={"node": address, "adapter": name})
                await _call(self.registry, address, "UnloadLoraAdapter", name, "", self.timeout_s)
                await self.registry.refresh()
        finally:
            self._asked.discard(key)

    async def _still_wanted(self, name: str) -> bool | None:
        """Whether the store has `name` loaded now (None when it did not answer: nothing is undone then)."""
        try:
            return name in (await self.store.read()).paths
        except StoreUnavailable:
            return None

    def _lists(self, address: str, name: str) -> bool:
        return any(n.address == address and name in n.lora_adapters for n in self.registry.snapshot())


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
