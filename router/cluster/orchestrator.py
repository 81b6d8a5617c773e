"""Runs one request across the cluster and yields its tokens as they come, across node failures.

Disaggregated: Reserve KV blocks on the decode node -> Prefill on the prefill node (which
streams the KV to the reservation and returns the first token, sent on at once) -> Decode
on the decode node streams the rest. Colocated: Generate on one mixed node. Closing the
iterator early (client gone, stop string) cancels the node calls, which abort there.

Failover (router/cluster/failover.py): when a node call fails with a retryable code, the nodes of that
route get a health check (the dead leave the routing set), the router waits a backoff, routes
again without them and re-dispatches the prompt plus the tokens already yielded as a
continuation; the consumer's iterator just goes on, so its text state (stop strings) carries
over. After `max_retries` re-dispatches the last error goes out, naming every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import AsyncIterator

import grpc

from splitserve.chunkcache.keys import content_hash, salted_key
from splitserve.node_api import PrefillResult, Reservation, TokenChunk
from splitserve.rpc.logs import request_id
from router.cluster.failover import RETRYABLE, NodeCallError, Progress, RetryConfig
from router.metrics import ROUTER, RequestTimer, RouterMetrics
from router.cluster.jobs import Done, Job, Tokens
from router.cluster.local_prefill import AFFINITY_SLACK, LocalPrefill
from router.cluster.node_client import NodeClient
from router.cluster.nodes import NodeRegistry
from router.cluster.policies import NoRoute, Policy, Route, RouteRequest

log = logging.getLogger(__name__)
__all__ = ["Done", "Job", "NodeCallError", "Orchestrator", "Tokens"]


class Orchestrator:
    def __init__(self, registry: NodeRegistry, policy: Policy, rpc_timeout_s: float = 60.0,
                 retry: RetryConfig = RetryConfig(), metrics: RouterMetrics = ROUTER,
                 max_local_prefill_tokens: int = 0, decode_affinity: bool = True,
                 decode_affinity_slack: int = AFFINITY_SLACK):
        """`max_local_prefill_tokens`: conditional disaggregation (router/cluster/local_prefill.py), 0: off;
        `decode_affinity`: split requests go to the decode node holding their prefix if it runs at most
        `decode_affinity_slack` requests more than the policy's choice (the same module)."""
        self.registry = registry
        self.policy = policy
        self.local_prefill = LocalPrefill(max_local_prefill_tokens, decode_affinity, decode_affinity_slack)
        self.rpc_timeout_s = rpc_timeout_s
        self.retry = retry
        self.metrics = metrics
        self.nodes = NodeClient(registry.channel, registry.call_watch, rpc_timeout_s)
        metrics.watch(registry)

    def route(self, job: Job) -> Route:
        """The first route of a job; NoRoute (-> UNAVAILABLE) when no healthy node can take it, ValueError when it
        names a LoRA adapter no healthy node serves."""
        lora = job.params.lora
        if lora is not None and lora not in (adapters := self.lora_adapters()):
            raise ValueError(f"unknown LoRA adapter {lora!r}; the cluster serves "
                             f"{', '.join(map(repr, adapters)) or 'none'}")
        try:
            return self._route(job)
        except NoRoute:
            self.metrics.count_error(grpc.StatusCode.UNAVAILABLE)
            raise

    def _route(self, job: Job, exclude: set[str] = frozenset()) -> Route:
        lora = job.params.lora
        nodes = [n for n in self.registry.snapshot()
                 if n.address not in exclude and (lora is None or lora in n.lora_adapters)]
        chosen = self.policy(nodes, self.route_request(job))
        route = self.local_prefill.route(job, chosen, nodes)
        if route.colocated and not chosen.colocated:
            self.metrics.local_prefills.inc()
        elif route.decode.address != chosen.decode.address:
            self.metrics.decode_affinity_routes.inc()
        self.registry.mark_routed(route.prefill.address, route.decode.address)
        return route

    def lora_adapters(self) -> list[str]:
        """The LoRA adapters requests may name: those healthy nodes serve (their --lora-modules), sorted."""
        return sorted({name for n in self.registry.snapshot() if n.healthy for name in n.lora_adapters})

    @staticmethod
    def route_request(job: Job) -> RouteRequest:
        prompt = job.prompt_token_ids
        salt = job.params.kv_namespace
        keys = frozenset(salted_key(content_hash(prompt[start:start + length]), salt) for start, length in job.chunks)
        return RouteRequest(len(prompt), job.params.max_tokens, job.hashes, keys,
                            sum(length for _, length in job.chunks), salt, job.params.lora)

    async def run(self, job: Job, route: Route) -> AsyncIterator[Tokens | Done]:
        progress, timer = Progress(job.request_id), RequestTimer(self.metrics, time.monotonic(), len(job.prompt_token_ids))
        outcome = "closed"
        request_id.set(job.request_id)  # this request's task: every log line below carries it
        self.metrics.running.inc()
        if job.params.lora is not None:
            self.metrics.lora_requests.labels(job.params.lora).inc()
        try:
            while True:
                try:
                    async for event in self._attempt(self._continuation(job, progress), route):
                        if isinstance(event, Done):
                            outcome = event.finish_reason
                            self.local_prefill.record(job, progress.sent, event.route)
                        else:
                            progress.sent += event.token_ids
                            timer.tokens(len(event.token_ids), time.monotonic())
                        yield event
                    return
                except NodeCallError as exc:
                    route = await self._recover(job, progress, route, exc)
        except NodeCallError as exc:
            outcome = "error"
            self.metrics.count_error(exc.code)
            raise
        finally:
            self.metrics.running.dec()
            timer.end(outcome, time.monotonic())
            log.info("request %s", outcome, extra={"prefill": route.prefill.address, "decode": route.decode.address,
                                                   "tokens": len(progress.sent), "retries": progress.retries})

    def _continuation(self, job: Job, progress: Progress) -> Job:
        """The job as re-dispatched after progress.sent went out (the prompt logprobs went with the first)."""
        params = replace(job.params, prompt_logprobs=None) if progress.sent else job.params
        return replace(job, request_id=progress.node_request_id(), params=params,
                       prompt_token_ids=job.prompt_token_ids + progress.sent,
                       num_prior_output_tokens=job.num_prior_output_tokens + len(progress.sent))

    async def _attempt(self, job: Job, route: Route):
        remaining = job.params.max_tokens - job.num_prior_output_tokens
        if remaining < 1:  # every token went out before the failure
            yield Done("length", 0, route)
            return
        if remaining == 1 and not route.colocated:  # the prefill's first token is the answer: no KV to move
            route = Route(route.prefill, route.prefill)
        stream = self._colocated(job, route) if route.colocated else self._disaggregated(job, route)
        async for event in stream:
            yield event

    async def _recover(self, job: Job, progress: Progress, route: Route, exc: NodeCallError) -> Route:
        """The route of the next attempt after exc, or the error for the client."""
        self.metrics.node_errors.labels(exc.call or "route", exc.code.name).inc()
        progress.record(exc)
        gone = self._lacks_adapter(job, progress, exc)  # listed a moment ago: another node may still serve it
        if exc.code not in RETRYABLE and not gone:
            raise progress.give_up(exc)
        if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED and exc.call == "Reserve":
            progress.full.add(exc.address)
            progress.refused = True
        elif not gone:
            progress.dead |= await self._dead_nodes(route)
        while progress.retries < self.retry.max_retries:
            progress.retries += 1
            self.metrics.failovers.labels(exc.code.name).inc()
            log.warning("re-dispatching after %s (retry %d, %d tokens sent)", progress.errors[-1], progress.retries,
                        len(progress.sent))
            await asyncio.sleep(self.retry.backoff(progress.retries))
            try:
                return self._route(self._continuation(job, progress), progress.dead | progress.full | progress.lacking)
            except NoRoute as no_route:
                if gone:  # no other node serves the adapter: it is gone (404 on HTTP), not the cluster
                    raise progress.give_up(exc) from None
                exc = NodeCallError(grpc.StatusCode.UNAVAILABLE, str(no_route))
                progress.record(exc)
                progress.full.clear()  # reservations free up: the full nodes may take it next time
        raise progress.give_up(exc)

    @staticmethod
    def _lacks_adapter(job: Job, progress: Progress, exc: NodeCallError) -> bool:
        """Whether exc is a node saying it does not serve the job's LoRA adapter (NOT_FOUND: unloaded, or restarted
        without it, since the Stats the router routed by): the node is left out of this job's routes, and where no
        route is left the NOT_FOUND is the answer (404 on HTTP)."""
        if exc.code != grpc.StatusCode.NOT_FOUND or job.params.lora is None or not exc.address:
            return False
        progress.lacking.add(exc.address)
        return True

    async def _dead_nodes(self, route: Route) -> set[str]:
        addresses = {route.prefill.address, route.decode.address}
        down = await asyncio.gather(*(self.registry.confirm_failure(a) for a in addresses))
        return {a for a, is_down in zip(addresses, down) if is_down}

    async def _colocated(self, job: Job, route: Route):
        address = route.prefill.address
        self.registry.track(address, "prefill_tokens", len(job.prompt_token_ids))
        self.registry.track(address, "decodes", 1)
        try:
            async for event in self._events(self.nodes.generate(address, job), route):
                yield event
        finally:
            self.registry.track(address, "prefill_tokens", -len(job.prompt_token_ids))
            self.registry.track(address, "decodes", -1)

    async def _disaggregated(self, job: Job, route: Route):
        self.registry.track(route.decode.address, "decodes", 1)  # from the reservation to the end
        try:
            async for event in self._reserve_prefill_decode(job, route):
                yield event
        finally:
            self.registry.track(route.decode.address, "decodes", -1)

    async def _reserve_prefill_decode(self, job: Job, route: Route):
        address = route.decode.address
        reservation = await self.nodes.reserve(job, route)
        try:
            first = await self._prefill(job, route, reservation)
        except BaseException:
            await self.nodes.abort(address, job.request_id)
            raise
        decoding = False  # the node's Decode has streamed: it took the reservation over
        try:
            yield Tokens([first.first_token_id], [first.logprob] if first.logprob is not None else [],
                         first.prompt_logprobs)
            if first.finished:
                await self.nodes.abort(address, job.request_id)
                yield Done(first.finish_reason, first.num_cached_tokens, route, first.prefill_s, first.transfer_s)
                return
            async for event in self._events(self.nodes.decode(address, job, first.first_token_id), route, first):
                decoding = True
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            # the client left: a Decode call cancelled before the node took it up (or never made) leaves the
            # reservation to the node's reservation timeout; once it streams, cancelling it frees everything
            if not decoding:
                await self.nodes.abort(address, job.request_id)
            raise

    async def _prefill(self, job: Job, route: Route, reservation: Reservation) -> PrefillResult:
        n, address = len(job.prompt_token_ids), route.prefill.address
        self.registry.track(address, "prefill_tokens", n)
        try:
            return await self.nodes.prefill(address, job, reservation)
        finally:
            self.registry.track(address, "prefill_tokens", -n)

    @staticmethod
    async def _events(chunks: AsyncIterator[TokenChunk], route: Route, prefill: PrefillResult | None = None):
        """A node's token stream as Tokens, then Done (the prefill's cached tokens and timings, if any)."""
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if chunk.token_ids:
                    yield Tokens(chunk.token_ids, chunk.logprobs, chunk.prompt_logprobs)
                if chunk.finished:
                    cached = prefill.num_cached_tokens if prefill is not None else chunk.num_cached_tokens
                    yield Done(chunk.finish_reason, cached, route, prefill.prefill_s if prefill else 0.0,
                               prefill.transfer_s if prefill else 0.0)
                    return
