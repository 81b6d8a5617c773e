"""Where a request's decode work goes, by what the decode nodes hold.

Decode affinity (on unless --no-decode-affinity): a split request goes to the decode node holding the most of its
prompt, unless that node runs more than `slack` requests (--decode-affinity-slack, default AFFINITY_SLACK) more than
the policy's choice; its Reserve takes the blocks held there, so only the KV after them moves. Conditional
disaggregation (Dynamo's; llm-d's decider counts the tokens not cached; --max-local-prefill-tokens): a request that
would leave at most `max_tokens` prompt tokens to compute on a decode node runs whole there (Generate), skipping the
Reserve, the Prefill on a prefill node and the KV transfer. Prompts with RAG documents do neither: the chunk cache
is the prefill nodes'.

What a decode node holds is known from what ran there: a request that decoded on a node leaves the KV of its prompt
and of the tokens it generated in that node's prefix cache (the blocks stay, freed but revivable, until the node
needs the room). So the next turn of a conversation, which repeats all of it, has only its new tokens to compute,
and it goes to the decode node that holds the rest, however long the whole prompt is; a turn with too much new to
run there (or every turn, without conditional disaggregation) goes split to that node. What a node holds is its
`holdings` (router/cluster/holdings.py: the blocks it reports, and those of the sequences that finished there since).
A node's hits count only where it says it has a prefix cache; a request for prompt logprobs never counts (they need
every prompt row computed), nor does a LoRA request on a node that does not report its adapters' loads (an adapter's
blocks hash from its load: NodeStats.lora_load_ids).
"""

from __future__ import annotations

from splitserve import labels
from router.cluster.jobs import Job
from router.cluster.nodes import NodeView
from router.cluster.policies import Route


# default --decode-affinity-slack: a split request goes to the decode node holding its prefix if that runs at most
# this many requests more than the policy's choice
AFFINITY_SLACK = 2


class LocalPrefill:
    def __init__(self, max_tokens: int, affinity: bool = True, slack: int = AFFINITY_SLACK):
        """max_tokens: the most prompt tokens a decode node computes for a request; 0: conditional disaggregation
        off. affinity: split requests go to the decode node holding their prefix if it runs at most `slack` requests
        more than the policy's."""
        if slack < 0:
            raise ValueError(f"the decode affinity slack must be >= 0, got {slack}")
        self.max_tokens = max_tokens
        self.affinity = affinity
        self.slack = slack

    def route(self, job: Job, route: Route, nodes: list[NodeView]) -> Route:
        """`route` (the policy's), or a local one on the decode node with the fewest tokens left to compute, if they
        are at most max_tokens (the policy's decode node wins ties). A request that stays split goes to the decode
        node holding the most of it, unless that node runs more than `slack` requests more than the policy's
        (its Reserve then reuses those blocks: less KV to move)."""
        if not self.enabled or route.colocated or job.chunks:
            return route
        decodes = [route.decode] + [n for n in nodes if n.healthy and n.role == labels.ROLE_DECODE
                                    and n.address != route.decode.address]
        if not self.max_tokens and len(decodes) == 1:
            return route
        uncached = {n.address: self._uncached(job, n) for n in decodes}
        node = min(decodes, key=lambda n: uncached[n.address])
        if uncached[node.address] <= self.max_tokens:
            return Route(node, node)
        if self.affinity and holder_wins(route.decode, node, uncached, self.slack):
            return Route(route.prefill, node)
        return route

    def record(self, job: Job, sent: list[int], route: Route) -> None:
        """The request ran to its end on `route` (having generated `sent`, the last of them never fed back)."""
        node = route.decode
        root = _root(job, node)
        if not self.enabled or node.role != labels.ROLE_DECODE or root is None or job.chunks:
            return
        if not route.colocated and len(sent) < 2:  # finished with the prefill's token: the KV never went in
            return
        node.holdings.add(job.hashes.extended(sent[:-1], node.block_size, root), node.total_blocks)

    @property
    def enabled(self) -> bool:
        return bool(self.max_tokens) or self.affinity

    def _uncached(self, job: Job, node: NodeView) -> int:
        n = len(job.prompt_token_ids)
        root = _root(job, node) if len(node.holdings) else None
        if root is None:
            return n
        matched = node.holdings.leading(job.hashes.blocks(node.block_size, root))
        return n - min(matched * node.block_size, n - 1)  # the last prompt token is always computed


def holder_wins(chosen: NodeView, holder: NodeView, uncached: dict[str, int], slack: int = AFFINITY_SLACK) -> bool:
    """Decode affinity's rule: `holder` (the decode node with the fewest prompt tokens left uncached) takes a split
    request instead of the policy's `chosen` when it has fewer uncached and runs at most `slack` requests more
    (the simulator applies it too, splitserve/sim/cluster.py)."""
    return uncached[holder.address] < uncached[chosen.address] \
        and holder.inflight_decodes <= chosen.inflight_decodes + slack


def _root(job: Job, node: NodeView) -> bytes | None:
    """Where the job's block hashes start on `node` (block_pool.kv_root); None where none of its blocks would be
    reused there (no prefix cache, prompt logprobs, a LoRA adapter whose load the node does not report)."""
    if not node.prefix_caching or node.total_blocks <= 0 or job.params.prompt_logprobs is not None:
        return None
    return node.hash_root(job.params.kv_namespace, job.params.lora)
