"""What the simulated cluster is: pool sizes, policy, transport, the router's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.cluster.local_prefill import AFFINITY_SLACK
from router.cluster.policies import SplitwiseConfig
from splitserve.sim.host import HostModel, assign_hosts
from splitserve.sim.node import NodeSim
from splitserve.sim.profile import Profile
from splitserve.sim.routing import POLICIES, ExactRouter

ROLES = ("prefill", "decode", "mixed")


@dataclass(frozen=True)
class ClusterConfig:
    prefill: int = 1
    decode: int = 1
    mixed: int = 0
    policy: str = "least_loaded"
    transport: str = "torch"
    max_queue: int = 256  # router --max-queue
    hop_s: float = 0.001  # one gRPC call or reply
    poll_interval_s: float = 0.5  # router health / Stats polling
    max_retries: int = 3
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    splitwise: SplitwiseConfig = field(default_factory=SplitwiseConfig)
    host_cores: int = 0  # cores of one host shared by its nodes (host.py); 0: each node has cores of its own
    nodes_per_host: int = 0  # with host_cores: nodes per host, in node order (0: all on one host)
    router: str = "auto"  # exact (router/cluster/policies.py per request), index (heaps), auto: index above 64 nodes
    step_jitter: bool = False  # decode steps drawn from the profile's measured spread (jitter.py)
    seed: int = 0  # of the step jitter's draws
    decode_affinity: bool = True  # the router's default (--no-decode-affinity: False)
    decode_affinity_slack: int = AFFINITY_SLACK  # the router's --decode-affinity-slack
    max_local_prefill_tokens: int = 0  # the router's conditional disaggregation (0: off)

    def __post_init__(self):
        if min(self.prefill, self.decode, self.mixed) < 0 or self.prefill + self.decode + self.mixed == 0:
            raise ValueError(f"node counts must be >= 0 and not all 0, got P={self.prefill} D={self.decode} M={self.mixed}")
        if (self.prefill == 0) != (self.decode == 0) and self.mixed == 0:
            raise ValueError("prefill and decode pools come together (or add mixed nodes)")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.max_local_prefill_tokens < 0 or self.decode_affinity_slack < 0:
            raise ValueError(f"max_local_prefill_tokens and decode_affinity_slack must be >= 0, got "
                             f"{self.max_local_prefill_tokens}, {self.decode_affinity_slack}")
        if self.max_queue < 1 or self.hop_s < 0 or self.poll_interval_s <= 0:
            raise ValueError("max_queue must be >= 1, hop_s >= 0, poll_interval_s > 0")
        if self.host_cores < 0 or self.nodes_per_host < 0:
            raise ValueError(f"host_cores and nodes_per_host must be >= 0, got {self.host_cores}, {self.nodes_per_host}")
        if self.router not in ("auto", "exact", "index"):
            raise ValueError(f"router must be auto, exact or index, got {self.router!r}")

    @property
    def num_nodes(self) -> int:
        return self.prefill + self.decode + self.mixed


def build_nodes(config: ClusterConfig, profiles: dict[str, Profile]) -> list[NodeSim]:
    nodes, changed = [], []  # one list of the nodes changed since the last Stats poll
    for role, n in (("prefill", config.prefill), ("decode", config.decode), ("mixed", config.mixed)):
        for i in range(n):
            nodes.append(NodeSim(f"{role}-{i:05d}", role, profiles[role], changed))
    if config.host_cores:
        share_hosts(nodes, config.host_cores, config.nodes_per_host)
    if config.step_jitter:
        from splitserve.sim.jitter import StepJitter

        for node in nodes:
            node.jitter = StepJitter.for_node(node.profile, config.seed, node.name)
    return nodes


def share_hosts(nodes: list[NodeSim], cores: int, nodes_per_host: int) -> None:
    """Each node learns its host's other nodes and the stretch model of its own profile."""
    hosts: dict[int, list[NodeSim]] = {}
    for node, host in zip(nodes, assign_hosts(len(nodes), nodes_per_host)):
        hosts.setdefault(host, []).append(node)
    for members in hosts.values():
        for node in members:
            node.host_peers = [n for n in members if n is not node]
            node.host_model = HostModel.from_profile(node.profile, cores)


def make_router(config: ClusterConfig, nodes: list[NodeSim]):
    if config.router == "exact" or (config.router == "auto" and (len(nodes) <= 64 or config.policy == "cache_aware")):
        return ExactRouter(nodes, config.policy, config.splitwise)
    from splitserve.sim.routing_index import IndexRouter

    return IndexRouter(nodes, config.policy, config.splitwise)
