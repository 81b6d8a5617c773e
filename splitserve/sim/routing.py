"""The router's choices in the simulation: router/cluster/policies.py itself, fed with NodeViews.

A NodeView mixes two sources, as in router/cluster/nodes.py: the router's own in-flight counters
(exact, updated at once) and each node's last Stats (free blocks, queues, pending prompt
tokens), refreshed every `poll_interval_s` of simulated time. `ExactRouter` builds the views
and calls the registered policy, so the simulation makes the router's decisions by
construction; its cost is linear in the node count per request. `routing_index.py` answers
the same questions from heaps for large fleets (tests check both agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.cluster.nodes import NodeView
from router.cluster.prefix_index import PromptHashes
from router.cluster.policies import NoRoute, RouteRequest, SplitwiseConfig, get_policy, splitwise

POLICIES = ("round_robin", "least_loaded", "cache_aware", "splitwise")
MOONCAKE_BLOCK = 512


@dataclass(slots=True)
class NodeStats:
    """What a node's last Stats said (router/cluster/nodes.py _poll_stats)."""

    free_blocks: int = 0
    total_blocks: int = 0
    num_waiting: int = 0
    num_running: int = 0
    num_pending_prefill_tokens: int = 0


def make_policy(name: str, splitwise_config: SplitwiseConfig | None = None):
    if name == "splitwise" and splitwise_config is not None:
        return splitwise(splitwise_config)
    return get_policy(name)


def poll_stats(node) -> NodeStats:
    return NodeStats(node.free_blocks, node.num_blocks, len(node.waiting), node.num_running,
                     node.pending_prefill_tokens())


def synthetic_token_ids(req) -> list[int]:
    """Token ids standing for a Mooncake prompt: each 512-token block of `hash_ids` becomes the
    same ids wherever it appears (what the bench's text blocks give), for cache_aware's index."""
    ids = []
    for k, h in enumerate(req.hash_ids):
        n = min(MOONCAKE_BLOCK, req.prompt_tokens - k * MOONCAKE_BLOCK)
        ids.extend(range(h * MOONCAKE_BLOCK, h * MOONCAKE_BLOCK + max(n, 0)))
    return ids


class ExactRouter:
    def __init__(self, nodes: list, policy: str, splitwise_config: SplitwiseConfig | None = None):
        self.nodes = nodes
        self.by_address = {n.name: n for n in nodes}
        self.policy = make_policy(policy, splitwise_config)
        self.policy_name = policy
        self.stats = {n.name: NodeStats(total_blocks=n.num_blocks, free_blocks=n.num_blocks) for n in nodes}
        self.inflight = {n.name: [0, 0] for n in nodes}  # prefill tokens, decodes
        self.last_routed, self.route_seq = {n.name: 0 for n in nodes}, 0  # the load tie-break (NodeView.last_routed)
        self.prefer_route = None  # (req, the policy's prefill and decode nodes, excluded) -> the nodes it goes to

    def poll(self) -> list:
        """Refresh the Stats of the nodes that changed since the last poll; those nodes."""
        changed = self.nodes[0].changed[:] if self.nodes else []
        if changed:
            self.nodes[0].changed.clear()
        stats = self.stats
        for n in changed:
            old, stats[n.name] = stats[n.name], poll_stats(n)
            n.dirty = False
            self._polled(n, old)
        return changed

    def _polled(self, node, old: NodeStats) -> None:
        """A node's Stats were just replaced (old: the previous ones)."""

    def track(self, node, prefill_tokens: int = 0, decodes: int = 0) -> None:
        counters = self.inflight[node.name]
        counters[0] += prefill_tokens
        counters[1] += decodes

    def view(self, node) -> NodeView:
        s, (tokens, decodes) = self.stats[node.name], self.inflight[node.name]
        return NodeView(node.name, node.role, node.name, True, tokens, decodes, s.free_blocks,
                        s.total_blocks, node.block_size, s.num_waiting, s.num_running, s.num_pending_prefill_tokens,
                        last_routed=self.last_routed[node.name])

    def route(self, req, exclude: frozenset | set = frozenset()):
        """(prefill node, decode node); the same mixed node twice means colocated. NoRoute when none. A split
        request's decode node may then give way to one holding more of its prompt (decode affinity) or run whole on
        one (conditional disaggregation): `prefer_route`, router/cluster/local_prefill.py."""
        prefill, decode = self._choose(req, exclude)
        if self.prefer_route is not None and prefill is not decode:
            prefill, decode = self.prefer_route(req, prefill, decode, exclude)
        self.mark_routed(prefill, decode)
        return prefill, decode

    def mark_routed(self, *nodes) -> None:
        """As router/cluster/nodes.py NodeRegistry.mark_routed: the nodes' last route is this one."""
        self.route_seq += 1
        for node in nodes:
            self.last_routed[node.name] = self.route_seq

    def _choose(self, req, exclude):
        ids = synthetic_token_ids(req) if self.policy_name == "cache_aware" and req.hash_ids else ()
        request = RouteRequest(req.prompt_tokens, req.target, PromptHashes(ids))
        route = self.policy([self.view(n) for n in self.nodes if n.name not in exclude], request)
        return self.by_address[route.prefill.address], self.by_address[route.decode.address]


__all__ = ["ExactRouter", "NoRoute", "NodeStats", "POLICIES", "make_policy", "poll_stats"]
