"""The router's view of the nodes: who they are, their role, whether they serve, how loaded.

Nodes come and go through `add` / `remove` (static flags, a YAML file or Kubernetes discovery,
router/cluster/discovery.py). Health comes from the gRPC health protocol (router/cluster/health.py), checked
in the background; a node that fails enough checks leaves the routing set and comes back when
it passes again. Load has two sources: what the router itself has in flight on each node
(exact and instant), and each healthy node's last `Stats` (free KV blocks, queues, chunk keys).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc

from splitserve import labels
from splitserve.engine.block_pool import kv_root
from splitserve.grpc_util import aio_channel
from router.cluster import health
from router.cluster.health import HealthConfig, HealthState
from router.cluster.holdings import BlockHoldings
from router.cluster.stall import CallWatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeView:
    """A snapshot of one node, the input of routing policies."""

    address: str
    role: str
    node_id: str = ""
    healthy: bool = False
    inflight_prefill_tokens: int = 0  # this router's prompts in flight there
    inflight_decodes: int = 0  # this router's requests decoding (or reserved) there
    free_blocks: int = 0
    total_blocks: int = 0
    block_size: int = 16
    num_waiting: int = 0
    num_running: int = 0
    num_pending_prefill_tokens: int = 0  # the node's own count, all routers together
    chunk_keys: frozenset[str] = frozenset()  # RAG chunk-caches the node holds (empty until nodes report them)
    lora_adapters: frozenset[str] = frozenset()  # the LoRA adapters requests may name there (from its Stats)
    prefix_caching: bool = False  # it reuses cached prompt blocks (from its Stats; unknown until then: no)
    sends_partial_kv: bool = False  # a prefill node that sends only the KV its decode node lacks (from its Stats)
    lora_load_ids: tuple[tuple[str, str], ...] = ()  # (adapter, the id of its load there), from its Stats
    startup_lora_adapters: frozenset[str] = frozenset()  # those of lora_adapters from its own flags (from its Stats)
    last_routed: int = 0  # this router's sequence number of its last route there (0: never); policies break load ties by it
    # the blocks its prefix cache holds (router/cluster/holdings.py; one object per node, updated in place)
    holdings: BlockHoldings = field(default_factory=BlockHoldings, compare=False, repr=False)

    @property
    def held_blocks(self) -> int:
        return len(self.holdings)

    def hash_root(self, namespace: str | None, lora: str | None) -> bytes | None:
        """Where the block hashes of a prompt under `namespace` (SamplingParams.kv_namespace) start there
        (block_pool.kv_root): with a LoRA adapter, from the adapter's load there; None if the node does not say."""
        if lora is None:
            return kv_root(namespace)
        load_id = self.lora_load_id(lora)
        return None if load_id is None else kv_root(namespace, load_id)

    def lora_load_id(self, adapter: str) -> str | None:
        """The id of the adapter's load there (its prompts' blocks hash from it); None if the node does not say."""
        return next((load_id for name, load_id in self.lora_load_ids if name == adapter), None)


def parse_static_nodes(spec: str) -> list[tuple[str, str]]:
    """'prefill=h:p,decode=h:p,mixed=h:p' -> [(role, address)]; ValueError names the allowed roles."""
    nodes = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        role, sep, address = item.partition("=")
        if not sep or role not in labels.NODE_ROLES or ":" not in address:
            raise ValueError(f"bad node {item!r}: expected ROLE=HOST:PORT with ROLE in {', '.join(labels.NODE_ROLES)}")
        nodes.append((role, address))
    return nodes


@dataclass
class _Node:
    view: NodeView
    channel: grpc.aio.Channel
    health: HealthState
    counters: dict = field(default_factory=lambda: {"prefill_tokens": 0, "decodes": 0, "last_routed": 0})
    calls: CallWatch = field(default_factory=CallWatch)  # cancelled when the node turns unhealthy (router/cluster/stall.py)

    def set_healthy(self, healthy: bool) -> None:
        self.view = replace(self.view, healthy=healthy)
        if not healthy:
            self.calls.fire()


class NodeRegistry:
    def __init__(self, health_config: HealthConfig = HealthConfig(), rpc_timeout_s: float = 2.0,
                 credentials: grpc.ChannelCredentials | None = None, channel_options: tuple = ()):
        self._nodes: dict[str, _Node] = {}
        self.credentials, self.channel_options = credentials, channel_options  # mTLS to the nodes (router/server.py)
        self.health_config = health_config
        self.rpc_timeout_s = rpc_timeout_s
        self._poller: asyncio.Task | None = None
        self._route_seq = itertools.count(1)
        self.on_refresh: list[Callable[[], None]] = []  # run after each background refresh (lora_admin's reconciling)

    def add(self, role: str, address: str) -> None:
        """Adds a node (unhealthy until its first passed check); a known address with a new role is replaced."""
        node = self._nodes.get(address)
        if node is not None:
            if node.view.role == role:
                return
            del self._nodes[address]
            asyncio.get_running_loop().create_task(node.channel.close())
        channel = aio_channel(address, self.credentials, self.channel_options)
        self._nodes[address] = _Node(NodeView(address, role), channel, HealthState(self.health_config))
        log.info("node added", extra={"node": address, "role": role})

    async def remove(self, address: str) -> None:
        node = self._nodes.pop(address, None)
        if node is not None:
            log.info("node removed", extra={"node": address, "role": node.view.role})
            node.calls.fire()
            await node.channel.close()

    def addresses(self) -> set[str]:
        return set(self._nodes)

    def channel(self, address: str) -> grpc.aio.Channel:
        """The node's channel; KeyError for a node that left."""
        return self._nodes[address].channel

    def call_watch(self, address: str) -> CallWatch | None:
        """The node's calls in flight, cancelled when it turns unhealthy or leaves (None: an unknown node)."""
        node = self._nodes.get(address)
        return node.calls if node is not None else None

    def snapshot(self) -> list[NodeView]:
        return [replace(n.view, inflight_prefill_tokens=n.counters["prefill_tokens"],
                        inflight_decodes=n.counters["decodes"], last_routed=n.counters["last_routed"])
                for n in self._nodes.values()]

    def mark_routed(self, *addresses: str) -> None:
        """Records a route to these nodes: among equally loaded nodes the least recently routed wins."""
        seq = next(self._route_seq)
        for address in addresses:
            if address in self._nodes:
                self._nodes[address].counters["last_routed"] = seq

    def track(self, address: str, key: str, delta: int) -> None:
        node = self._nodes.get(address)
        if node is not None:
            node.counters[key] += delta

    async def confirm_failure(self, address: str) -> bool:
        """After a failed call: checks the node now; if it fails, it leaves the routing set at
        once (the background checks re-admit it). True when the node is down."""
        node = self._nodes.get(address)
        if node is None:
            return True
        if await health.check(node.channel, self.health_config.timeout_s):
            return False
        if node.health.fail_now():
            log.warning("node unhealthy (failed call confirmed)", extra={"node": address})
        node.set_healthy(False)
        return True

    async def refresh(self) -> None:
        await asyncio.gather(*(self._refresh_one(n) for n in list(self._nodes.values())))

    async def _refresh_one(self, node: _Node) -> None:
        ok = await health.check(node.channel, self.health_config.timeout_s)
        if node.health.observe(ok):
            log.log(logging.INFO if ok else logging.WARNING, "node healthy" if ok else "node unhealthy",
                    extra={"node": node.view.address, "role": node.view.role})
        node.set_healthy(node.health.healthy)
        if ok:
            await self._poll_stats(node)

    async def _poll_stats(self, node: _Node) -> None:
        s = await health.fetch_load(node.channel, self.rpc_timeout_s, node.view.holdings.cursor())
        if s is None:
            return  # a busy engine answers late: keep the last numbers, health decides membership
        if s.kv_blocks is not None:
            node.view.holdings.apply(s.node_id, s.kv_blocks)
        node.view = replace(
            node.view, node_id=s.node_id, free_blocks=s.free_blocks, total_blocks=s.total_blocks,
            block_size=s.block_size, num_waiting=s.num_waiting, num_running=s.num_running,
            num_pending_prefill_tokens=s.num_pending_prefill_tokens, chunk_keys=s.chunk_keys,
            lora_adapters=s.lora_adapters, prefix_caching=s.prefix_caching, sends_partial_kv=s.sends_partial_kv,
            lora_load_ids=s.lora_load_ids, startup_lora_adapters=s.startup_lora_adapters)

    def start_polling(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await self.refresh()
            for hook in self.on_refresh:
                hook()
            await asyncio.sleep(self.health_config.interval_s)

    async def wait_healthy(self, timeout_s: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            await self.refresh()
            if self._nodes and all(n.view.healthy for n in self._nodes.values()):
                return True
            await asyncio.sleep(0.1)
        return False

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for address in list(self._nodes):
            await self.remove(address)
