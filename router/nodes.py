"""The router's view of the nodes: who they are, their role, and how loaded they are.

Load has two sources: what the router itself has in flight on each node (exact and
instant), and each node's last `Stats` (free KV blocks, queues), polled in the background.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace

import grpc

from splitserve import labels
from splitserve.api.v1 import node_pb2, node_pb2_grpc
from splitserve.grpc_util import aio_channel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeView:
    """A snapshot of one node, the input of routing policies."""

    address: str
    role: str
    node_id: str = ""
    healthy: bool = False
    inflight_prefill_tokens: int = 0
    inflight_decodes: int = 0
    free_blocks: int = 0
    total_blocks: int = 0
    block_size: int = 16
    num_waiting: int = 0


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
    stub: node_pb2_grpc.NodeStub
    counters: dict = field(default_factory=lambda: {"prefill_tokens": 0, "decodes": 0})


class NodeRegistry:
    def __init__(self, poll_interval_s: float = 0.5, rpc_timeout_s: float = 2.0):
        self._nodes: dict[str, _Node] = {}
        self.poll_interval_s = poll_interval_s
        self.rpc_timeout_s = rpc_timeout_s
        self._poller: asyncio.Task | None = None

    def add(self, role: str, address: str) -> None:
        if address not in self._nodes:
            channel = aio_channel(address)
            self._nodes[address] = _Node(NodeView(address, role), channel, node_pb2_grpc.NodeStub(channel))

    async def remove(self, address: str) -> None:
        node = self._nodes.pop(address, None)
        if node is not None:
            await node.channel.close()

    def stub(self, address: str) -> node_pb2_grpc.NodeStub:
        return self._nodes[address].stub

    def snapshot(self) -> list[NodeView]:
        return [replace(n.view, inflight_prefill_tokens=n.counters["prefill_tokens"],
                        inflight_decodes=n.counters["decodes"]) for n in self._nodes.values()]

    def track(self, address: str, key: str, delta: int) -> None:
        node = self._nodes.get(address)
        if node is not None:
            node.counters[key] += delta

    def mark_unhealthy(self, address: str) -> None:
        node = self._nodes.get(address)
        if node is not None:
            node.view = replace(node.view, healthy=False)

    async def refresh(self) -> None:
        await asyncio.gather(*(self._refresh_one(n) for n in list(self._nodes.values())))

    async def _refresh_one(self, node: _Node) -> None:
        try:
            s = await node.stub.Stats(node_pb2.StatsRequest(), timeout=self.rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if node.view.healthy:
                log.warning("node %s unhealthy: %s", node.view.address, exc.code().name)
            node.view = replace(node.view, healthy=False)
            return
        node.view = replace(node.view, node_id=s.node_id, healthy=True, free_blocks=s.num_free_blocks,
                            total_blocks=s.num_total_blocks, block_size=s.block_size or 16, num_waiting=s.num_waiting)

    def start_polling(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_interval_s)

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
