"""Routing policies: pure functions of (node snapshot, request) -> Route.

A Route names a prefill node and a decode node; the same mixed node in both places means the
request runs colocated there. Registered by name; `get_policy` raises KeyError listing names.
A policy may keep state across calls (round_robin's turn, cache_aware's prefix index), never
network access. Load ties go to the least recently routed node (NodeView.last_routed, kept by
the caller), so equally idle nodes share a light load instead of the first address taking all.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

from splitserve import labels
from splitserve.engine.block_pool import kv_root
from router.cluster.nodes import NodeView
from router.cluster.prefix_index import PrefixIndex, PromptHashes


@dataclass(frozen=True)
class RouteRequest:
    num_prompt_tokens: int
    max_tokens: int
    prompt: PromptHashes = field(default_factory=lambda: PromptHashes(()))  # cache_aware reads its block hashes
    chunk_keys: frozenset[str] = frozenset()  # keys of the request's RAG chunks
    num_chunk_tokens: int = 0  # prompt tokens those chunks cover (0: unknown)
    namespace: str | None = None  # what its cached KV is shared under (SamplingParams.kv_namespace)
    lora: str | None = None  # its LoRA adapter: its blocks hash from the adapter's load on each node

    @property
    def hash_root(self) -> bytes:
        """Where its blocks' hash chain starts in this router's own index (the namespace's, whatever the node)."""
        return kv_root(self.namespace)


@dataclass(frozen=True)
class Route:
    prefill: NodeView
    decode: NodeView

    @property
    def colocated(self) -> bool:
        return self.prefill.address == self.decode.address


class NoRoute(Exception):
    """No healthy node can take the request (-> UNAVAILABLE)."""


Policy = Callable[[list[NodeView], RouteRequest], Route]
_POLICIES: dict[str, Callable[[], Policy]] = {}


def register(name: str):
    def wrap(factory):
        _POLICIES[name] = factory
        return factory
    return wrap


def get_policy(name: str) -> Policy:
    try:
        return _POLICIES[name]()
    except KeyError:
        raise KeyError(f"unknown routing policy {name!r}; available: {', '.join(sorted(_POLICIES))}") from None


def healthy(nodes: list[NodeView], role: str, exclude: frozenset[str] = frozenset()) -> list[NodeView]:
    return [n for n in nodes if n.role == role and n.healthy and n.address not in exclude]


def prefill_load(n: NodeView) -> tuple:
    return (n.inflight_prefill_tokens, n.num_waiting, *tie_break(n))


def tie_break(n: NodeView) -> tuple:
    """The last part of every load key: among equally loaded nodes the least recently routed
    wins (the caller records routes in `last_routed`), so idle nodes take turns; then address."""
    return (n.last_routed, n.address)


def pending_prefill_tokens(n: NodeView) -> int:
    """Prompt tokens queued on n: this router's in-flight count (exact, instant) or the node's
    own count (all routers, as of the last Stats), whichever is larger."""
    return max(n.inflight_prefill_tokens, n.num_pending_prefill_tokens)


def decode_load(n: NodeView) -> tuple:
    return (n.inflight_decodes, -n.free_blocks, *tie_break(n))


def split_or_colocated(nodes: list[NodeView], choose_prefill, choose_decode, choose_mixed) -> Route:
    prefills, decodes = healthy(nodes, labels.ROLE_PREFILL), healthy(nodes, labels.ROLE_DECODE)
    if prefills and decodes:
        return Route(choose_prefill(prefills), choose_decode(decodes))
    mixed = healthy(nodes, labels.ROLE_MIXED)
    if mixed:
        node = choose_mixed(mixed)
        return Route(node, node)
    raise NoRoute("no healthy prefill+decode pair and no healthy mixed node")


@register("least_loaded")
def least_loaded() -> Policy:
    """Least outstanding work per phase: prefill by pending prompt tokens, decode by running
    requests then free KV blocks, mixed nodes by both."""
    def choose(nodes: list[NodeView], request: RouteRequest) -> Route:
        return split_or_colocated(
            nodes, lambda ps: min(ps, key=prefill_load), lambda ds: min(ds, key=decode_load),
            lambda ms: min(ms, key=lambda n: (n.inflight_prefill_tokens + n.inflight_decodes, *tie_break(n))))
    return choose


@register("round_robin")
def round_robin() -> Policy:
    counter = itertools.count()

    def choose(nodes: list[NodeView], request: RouteRequest) -> Route:
        turn = next(counter)
        pick = lambda ns: sorted(ns, key=lambda n: n.address)[turn % len(ns)]
        return split_or_colocated(nodes, pick, pick, pick)
    return choose


# CacheBlend reuses a chunk's KV but recomputes about this fraction of its tokens.
CHUNK_RECOMPUTE_FRACTION = 0.15


def cached_tokens(n: NodeView, request: RouteRequest, matched_blocks: int) -> float:
    """Prompt tokens n would not compute: its prefix hit or its chunk hits, whichever is larger
    (both may cover the same leading documents, so they are not added)."""
    prefix = min(matched_blocks * n.block_size, request.num_prompt_tokens - 1)
    if not request.chunk_keys:
        return prefix
    k = len(request.chunk_keys)
    chunk_tokens = request.num_chunk_tokens or request.num_prompt_tokens * k / (k + 1)  # unknown: chunks + question
    hit = len(request.chunk_keys & n.chunk_keys) / k
    return max(prefix, hit * chunk_tokens * (1 - CHUNK_RECOMPUTE_FRACTION))


@register("cache_aware")
def cache_aware(index_capacity: int = 65536) -> Policy:
    """Prefill where the request starts soonest counting reuse: minimum of (tokens queued on
    the node + prompt tokens it would still compute), as Mooncake's TTFT estimate in tokens.
    Prefix hits: the blocks a node reports holding (NodeView.holdings) or, where more, an LRU of the block hashes
    this router routed there (at once, before the node's next report); chunk hits from the chunk keys nodes report
    in Stats (none yet: prefix hits alone). Decode: least loaded."""
    index = PrefixIndex(index_capacity)

    def choose(nodes: list[NodeView], request: RouteRequest) -> Route:
        block_size = next((n.block_size for n in nodes if n.healthy and n.role != labels.ROLE_DECODE), 16)
        hashes = request.prompt.blocks(block_size, request.hash_root)
        matched = index.matched_blocks(hashes)

        def cost(n: NodeView) -> tuple:
            held = max(matched.get(n.address, 0), reported_hits(n, request))
            work = request.num_prompt_tokens - cached_tokens(n, request, held)
            return (pending_prefill_tokens(n) + work, *tie_break(n))
        route = split_or_colocated(nodes, lambda ps: min(ps, key=cost), lambda ds: min(ds, key=decode_load),
                                   lambda ms: min(ms, key=cost))
        index.record(hashes, route.prefill.address)
        return route
    return choose


def reported_hits(n: NodeView, request: RouteRequest) -> int:
    """Leading blocks of the prompt that n's prefix cache holds (NodeView.holdings), hashed as n hashes them."""
    root = n.hash_root(request.namespace, request.lora) if n.prefix_caching else None
    return 0 if root is None else n.holdings.leading(request.prompt.blocks(n.block_size, root))


@dataclass(frozen=True)
class SplitwiseConfig:
    """When a pool counts as overloaded (then its requests overflow to the mixed pool).

    prefill_overload_tokens: a prefill node is overloaded when its queued prompt tokens reach
      this (Splitwise caps a prompt machine's batch at 2048 tokens: beyond it throughput drops).
    decode_min_free_ratio: a decode node is overloaded when taking this request's blocks
      (prompt + max_tokens) would leave less than this fraction of its KV pool free.
    A pool is overloaded when every healthy node in it is (or it has none).
    """

    prefill_overload_tokens: int = 2048
    decode_min_free_ratio: float = 0.1

    def __post_init__(self):
        if self.prefill_overload_tokens < 1:
            raise ValueError(f"prefill_overload_tokens must be >= 1, got {self.prefill_overload_tokens}")
        if not 0.0 <= self.decode_min_free_ratio < 1.0:
            raise ValueError(f"decode_min_free_ratio must be in [0, 1), got {self.decode_min_free_ratio}")


def prefill_overloaded(n: NodeView, config: SplitwiseConfig) -> bool:
    return pending_prefill_tokens(n) >= config.prefill_overload_tokens


def decode_overloaded(n: NodeView, request: RouteRequest, config: SplitwiseConfig) -> bool:
    if n.total_blocks == 0:  # no Stats yet: nothing says it is full
        return False
    needed = math.ceil((request.num_prompt_tokens + request.max_tokens) / n.block_size)
    return n.free_blocks - needed < config.decode_min_free_ratio * n.total_blocks


@register("splitwise")
def splitwise(config: SplitwiseConfig = SplitwiseConfig()) -> Policy:
    """Splitwise's pools: prompts to the prefill pool, tokens to the decode pool, each by
    join-the-shortest-queue (pending tokens; running requests then free blocks). When either
    pool is overloaded (SplitwiseConfig), the request goes to the mixed pool, whose nodes run
    both phases with mixed batching; with no mixed node the overloaded pools still serve."""
    def choose(nodes: list[NodeView], request: RouteRequest) -> Route:
        prefills, decodes = healthy(nodes, labels.ROLE_PREFILL), healthy(nodes, labels.ROLE_DECODE)
        mixed = healthy(nodes, labels.ROLE_MIXED)
        overloaded = (not prefills or all(prefill_overloaded(n, config) for n in prefills)
                      or not decodes or all(decode_overloaded(n, request, config) for n in decodes))
        if mixed and overloaded:
            node = min(mixed, key=lambda n: (pending_prefill_tokens(n) + n.inflight_decodes, *tie_break(n)))
            return Route(node, node)
        jsq_prefill = lambda ps: min(ps, key=lambda n: (pending_prefill_tokens(n), *tie_break(n)))
        jsq_decode = lambda ds: min(ds, key=lambda n: (decode_overloaded(n, request, config), *decode_load(n)))
        return split_or_colocated(nodes, jsq_prefill, jsq_decode, jsq_prefill)
    return choose
