"""Node health through the gRPC health protocol (grpc.health.v1), with hysteresis.

Every node serves `grpc.health.v1.Health` and reports NOT_SERVING while it drains. The
registry checks each node every `interval_s`; a node leaves the routing set after
`unhealthy_after` failed checks in a row (no answer within `timeout_s`, an error, or any
status but SERVING) and comes back after `healthy_after` passed checks in a row. The
orchestrator may also drop a node at once when a call to it fails and a check confirms it.
A healthy node's load comes from its Stats (`fetch_load`), polled with the checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitserve.api.v1 import node_pb2, node_pb2_grpc
from splitserve.engine.block_log import BlockChanges
from splitserve.node_api import NodeLoad

NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["Node"].full_name


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 0.5
    timeout_s: float = 1.0
    unhealthy_after: int = 2
    healthy_after: int = 1

    def __post_init__(self):
        if self.interval_s <= 0 or self.timeout_s <= 0:
            raise ValueError(f"health interval_s and timeout_s must be > 0, got {self.interval_s}, {self.timeout_s}")
        if self.unhealthy_after < 1 or self.healthy_after < 1:
            raise ValueError(f"health unhealthy_after and healthy_after must be >= 1, "
                             f"got {self.unhealthy_after}, {self.healthy_after}")


async def check(channel: grpc.aio.Channel, timeout_s: float, service: str = NODE_SERVICE) -> bool:
    """True when the server answers SERVING for service within timeout_s."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class HealthState:
    """One node's health verdict: flips only after enough checks agree in a row."""

    def __init__(self, config: HealthConfig):
        self.config = config
        self.healthy = False
        self._streak = 0  # consecutive checks that disagree with the current verdict

    def observe(self, ok: bool) -> bool:
        """Records one check; returns True when the verdict changed."""
        if ok == self.healthy:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak < (self.config.healthy_after if ok else self.config.unhealthy_after):
            return False
        self.healthy, self._streak = ok, 0
        return True

    def fail_now(self) -> bool:
        """A confirmed failure seen by a request: unhealthy at once. True when that is a change."""
        changed, self.healthy, self._streak = self.healthy, False, 0
        return changed


async def fetch_load(channel: grpc.aio.Channel, timeout_s: float,
                     kv_cursor: tuple[str, int] = ("", 0)) -> NodeLoad | None:
    """The node's Stats, with the changes of its prefix cache since `kv_cursor` (node instance, seq), or None when
    it did not answer (a busy engine answers late)."""
    request = node_pb2.StatsRequest(want_kv_blocks=True, kv_blocks_node_id=kv_cursor[0], kv_blocks_after=kv_cursor[1])
    try:
        s = await node_pb2_grpc.NodeStub(channel).Stats(request, timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return None
    kv = s.kv_blocks
    blocks = BlockChanges(kv.snapshot, tuple(kv.stored), tuple(kv.removed), kv.seq) if s.HasField("kv_blocks") else None
    return NodeLoad(s.node_id, s.num_free_blocks, s.num_total_blocks, s.block_size or 16, s.num_waiting,
                    s.num_running, s.num_pending_prefill_tokens, frozenset(s.chunk_keys), frozenset(s.lora_adapters),
                    s.prefix_caching, s.sends_partial_kv, blocks, tuple(sorted(s.lora_load_ids.items())),
                    frozenset(s.startup_lora_adapters))
