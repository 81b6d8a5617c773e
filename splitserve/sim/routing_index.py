"""router/cluster/policies.py's choices for large fleets, from heaps instead of a scan per request.

The same keys as the policies, kept per role in heaps with lazy invalidation: a node's entry
is pushed again when its key has changed (the router's counters moved, a Stats poll landed)
by the next routing decision: changes between two decisions cost one push per node. Stale
entries are dropped when they surface. Splitwise's "every decode node is overloaded"
needs the largest (free - ratio * total) blocks, which only a poll changes. Calls with
excluded nodes (retries after a full reservation: rare) and cache_aware go to the exact
router. tests/unit/test_sim_routing.py checks every choice against router/cluster/policies.py.
"""

from __future__ import annotations

import heapq
import math

from router.cluster.policies import NoRoute, SplitwiseConfig
from splitserve.sim.routing import ExactRouter

SUPPORTED = ("round_robin", "least_loaded", "splitwise")


class KeyHeap:
    def __init__(self):
        self.heap: list = []
        self.keys: dict = {}

    def __len__(self) -> int:
        return len(self.keys)

    def set(self, node, key: tuple) -> None:
        if self.keys.get(node) != key:
            self.keys[node] = key
            heapq.heappush(self.heap, (key, node))
            if len(self.heap) > 4 * len(self.keys) + 64:
                self.compact()

    def compact(self) -> None:
        self.heap = [(k, n) for n, k in self.keys.items()]
        heapq.heapify(self.heap)

    def min(self, ok=None):
        """The node with the smallest key (for which ok(node) holds); None when there is none."""
        heap, popped, found = self.heap, [], None
        while heap:
            key, node = heap[0]
            if self.keys[node] != key:
                heapq.heappop(heap)
                continue
            if ok is None or ok(node):
                found = node
                break
            popped.append(heapq.heappop(heap))
        for entry in popped:
            heapq.heappush(heap, entry)
        return found


class IndexRouter(ExactRouter):
    def __init__(self, nodes: list, policy: str, splitwise_config: SplitwiseConfig | None = None):
        super().__init__(nodes, policy, splitwise_config)
        self.config = splitwise_config or SplitwiseConfig()
        self.pools = {role: sorted((n for n in nodes if n.role == role), key=lambda n: n.name)
                      for role in ("prefill", "decode", "mixed")}
        self.heaps = {role: KeyHeap() for role in self.pools}
        self.turn = 0
        self.max_room, self.any_unpolled = math.inf, True
        self.indexed = self.policy_name in SUPPORTED
        self.stale: set = set(nodes) if self.indexed else set()  # nodes whose keys may have changed
        self.key_of = self._key_functions()
        self.slots = {n: (self.heaps[n.role], self.key_of[n.role]) for n in nodes}  # _flush's per-node lookups
        self.stats_fields = {n: self._stats_field(n) for n in nodes}

    def poll(self) -> list:
        changed = super().poll()
        if self.policy_name == "splitwise" and any(n.role == "decode" for n in changed):
            self._decode_rooms()
        return changed

    def _decode_rooms(self) -> None:
        rooms = [self.stats[n.name].free_blocks - self.config.decode_min_free_ratio * self.stats[n.name].total_blocks
                 for n in self.pools["decode"] if self.stats[n.name].total_blocks]
        self.any_unpolled = len(rooms) < len(self.pools["decode"])
        self.max_room = max(rooms, default=-math.inf)

    def track(self, node, prefill_tokens: int = 0, decodes: int = 0) -> None:
        counters = self.inflight[node.name]  # ExactRouter.track, inlined: it runs for every call
        counters[0] += prefill_tokens
        counters[1] += decodes
        if self.indexed:
            self.stale.add(node)

    def _pending(self, node) -> int:
        return max(self.inflight[node.name][0], self.stats[node.name].num_pending_prefill_tokens)

    def _key_functions(self) -> dict:
        """Per role, a node's key as the policy orders nodes: its load, then policies.tie_break
        (last routed, name). Closures over the router's counters: _flush runs one ~6 times a request."""
        inflight, stats, last = self.inflight, self.stats, self.last_routed

        def decode(node):
            name = node.name
            return (inflight[name][1], -stats[name].free_blocks, last[name], name)

        if self.policy_name == "least_loaded":
            def prefill(node):
                name = node.name
                return (inflight[name][0], stats[name].num_waiting, last[name], name)

            def mixed(node):
                name = node.name
                tokens, decodes = inflight[name]
                return (tokens + decodes, last[name], name)
        else:
            pending = self._pending

            def prefill(node):
                return (pending(node), last[node.name], node.name)

            def mixed(node):
                return (pending(node) + inflight[node.name][1], last[node.name], node.name)
        return {"decode": decode, "prefill": prefill, "mixed": mixed}

    def _polled(self, node, old) -> None:
        """The node's key reads one field of its Stats: recomputed only when that field changed."""
        field = self.stats_fields[node]
        if field is not None and getattr(self.stats[node.name], field) != getattr(old, field):
            self.stale.add(node)

    def _stats_field(self, node) -> str | None:
        """The field of the node's Stats its key reads (None: none, or no index)."""
        if not self.indexed or node.role == "mixed" and self.policy_name == "least_loaded":
            return None
        if node.role == "decode":
            return "free_blocks"
        return "num_waiting" if self.policy_name == "least_loaded" else "num_pending_prefill_tokens"

    def _mark_stale(self, nodes) -> None:
        if self.indexed:
            self.stale.update(nodes)

    def _flush(self) -> None:
        """KeyHeap.set for every stale node, inlined (a large simulation runs it ~10 times a request)."""
        slots, push = self.slots, heapq.heappush
        for node in self.stale:
            heap, key = slots[node]
            k = key(node)
            if heap.keys.get(node) != k:
                heap.keys[node] = k
                push(heap.heap, (k, node))
                if len(heap.heap) > 4 * len(heap.keys) + 64:
                    heap.compact()
        self.stale.clear()

    def mark_routed(self, *nodes) -> None:
        super().mark_routed(*nodes)
        self._mark_stale(nodes)

    def _choose(self, req, exclude):
        if self.policy_name == "round_robin":  # its turn counts every call, retries too
            return self._round_robin(exclude)
        if exclude or self.policy_name not in SUPPORTED:
            return super()._choose(req, exclude)
        self._flush()
        if self.policy_name == "splitwise":
            return self._splitwise(req)
        return self._split_or_colocated(self.heaps["prefill"].min, self.heaps["decode"].min, self.heaps["mixed"].min)

    def _split_or_colocated(self, choose_prefill, choose_decode, choose_mixed, pools=None):
        pools = pools or self.pools
        if pools["prefill"] and pools["decode"]:
            return choose_prefill(), choose_decode()
        if pools["mixed"]:
            node = choose_mixed()
            return node, node
        raise NoRoute("no healthy prefill+decode pair and no healthy mixed node")

    def _round_robin(self, exclude):
        turn, self.turn = self.turn, self.turn + 1
        pools = self.pools
        if exclude:
            pools = {role: [n for n in ns if n.name not in exclude] for role, ns in pools.items()}
        pick = lambda role: lambda: pools[role][turn % len(pools[role])]  # noqa: E731
        return self._split_or_colocated(pick("prefill"), pick("decode"), pick("mixed"), pools)

    def _splitwise(self, req):
        needed = math.ceil((req.prompt_tokens + req.target) / self.nodes[0].block_size)
        first_prefill = self.heaps["prefill"].min()
        prefill_over = first_prefill is None or self._pending(first_prefill) >= self.config.prefill_overload_tokens
        decode_over = not self.pools["decode"] or (not self.any_unpolled and self.max_room < needed)
        if self.pools["mixed"] and (prefill_over or decode_over):
            node = self.heaps["mixed"].min()
            return node, node
        if decode_over:
            choose_decode = self.heaps["decode"].min
        else:
            choose_decode = lambda: self.heaps["decode"].min(lambda n: not self._decode_overloaded(n, needed))  # noqa: E731
        return self._split_or_colocated(lambda: first_prefill, choose_decode, self.heaps["mixed"].min)

    def _decode_overloaded(self, node, needed: int) -> bool:
        s = self.stats[node.name]
        return s.total_blocks > 0 and s.free_blocks - needed < self.config.decode_min_free_ratio * s.total_blocks
