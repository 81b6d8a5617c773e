"""Embeddings across the cluster: each input is one Embed call on a prefill or mixed node.

An embedding is prefill work alone (nothing is decoded or transferred), so it goes to the
prefill pool, or to the mixed pool where there is no prefill node, whichever node has the
fewest prompt tokens queued; decode nodes never see one. The inputs of one request run side by
side (at most `max_parallel` at once) and spread over the pool. A failed call is retried as a
generated request would be (failover.py): the node gets a health check, the dead leave the
routing set, and the input goes to another node after a backoff; nothing was sent, so nothing
is lost.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from splitserve import labels
from router.cluster.failover import RETRYABLE, NodeCallError, Progress
from router.cluster.nodes import NodeView
from router.cluster.orchestrator import Orchestrator
from router.cluster.policies import NoRoute, healthy, pending_prefill_tokens, tie_break
from splitserve.engine.pooling import PoolingParams

DEFAULT_MAX_PARALLEL = 8


class Embedder:
    def __init__(self, orchestrator: Orchestrator, max_parallel: int = DEFAULT_MAX_PARALLEL):
        self.orchestrator = orchestrator
        self.max_parallel = max_parallel

    @property
    def registry(self):
        return self.orchestrator.registry

    async def embed(self, request_id: str, prompts: list[list[int]], params: PoolingParams) -> list[list[float]]:
        """One vector per prompt, in order; NoRoute or NodeCallError (after the retries) if one cannot be made."""
        gate = asyncio.Semaphore(self.max_parallel)

        async def one(i: int, prompt: list[int]) -> list[float]:
            async with gate:
                rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                return await self._embed_one(rid, prompt, params)
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    async def _embed_one(self, request_id: str, prompt: list[int], params: PoolingParams) -> list[float]:
        start, metrics = time.monotonic(), self.orchestrator.metrics
        embedded = await self._embed_with_retries(request_id, prompt, params)
        metrics.embeddings.inc()
        metrics.embedding_tokens.inc(len(prompt))
        metrics.embedding_latency.observe(time.monotonic() - start)
        return embedded

    async def _embed_with_retries(self, request_id: str, prompt: list[int], params: PoolingParams) -> list[float]:
        progress = Progress(request_id)
        while True:
            try:
                node = self.choose(progress.dead)
            except NoRoute as exc:
                if not progress.errors:
                    raise
                raise progress.give_up(NodeCallError(grpc.StatusCode.UNAVAILABLE, str(exc))) from None
            try:
                return await self._call(node.address, progress.node_request_id(), prompt, params)
            except NodeCallError as exc:
                await self._after_failure(node.address, progress, exc)

    async def _after_failure(self, address: str, progress: Progress, exc: NodeCallError) -> None:
        """Raises the client's error, or waits the backoff before the next attempt (the node left out if dead)."""
        metrics, retry = self.orchestrator.metrics, self.orchestrator.retry
        metrics.node_errors.labels(exc.call, exc.code.name).inc()
        progress.record(exc)
        if exc.code not in RETRYABLE or progress.retries >= retry.max_retries:
            raise progress.give_up(exc) from None
        if await self.registry.confirm_failure(address):
            progress.dead.add(address)
        progress.retries += 1
        metrics.failovers.labels(exc.code.name).inc()
        await asyncio.sleep(retry.backoff(progress.retries))

    def choose(self, exclude: set[str] = frozenset()) -> NodeView:
        """The prefill node (else mixed node) with the fewest prompt tokens queued."""
        nodes = self.registry.snapshot()
        pool = healthy(nodes, labels.ROLE_PREFILL, frozenset(exclude)) or healthy(nodes, labels.ROLE_MIXED,
                                                                                  frozenset(exclude))
        if not pool:
            raise NoRoute("no healthy prefill or mixed node to compute embeddings")
        node = min(pool, key=lambda n: (pending_prefill_tokens(n), *tie_break(n)))
        self.registry.mark_routed(node.address)
        return node

    async def _call(self, address: str, request_id: str, prompt: list[int], params: PoolingParams) -> list[float]:
        self.registry.track(address, "prefill_tokens", len(prompt))
        try:
            return await self.orchestrator.nodes.embed(address, request_id, prompt, params)
        finally:
            self.registry.track(address, "prefill_tokens", -len(prompt))
