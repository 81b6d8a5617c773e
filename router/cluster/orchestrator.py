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
from dataclasses import dataclass, field, replace
from typing import AsyncIterator

import grpc

from splitserve.api.v1 import common_pb2, node_pb2
from splitserve.chunkcache.keys import content_hash
from splitserve.engine import SamplingParams
from splitserve.rpc.convert import logprob_from_proto, sampling_to_proto
from splitserve.rpc.logs import request_id
from router.cluster.failover import RETRYABLE, NodeCallError, Progress, RetryConfig
from router.metrics import ROUTER, RequestTimer, RouterMetrics
from router.cluster.nodes import NodeRegistry
from router.cluster.policies import NoRoute, Policy, Route, RouteRequest
from router.cluster.stall import cancelled_when_down

log = logging.getLogger(__name__)
__all__ = ["Done", "Job", "NodeCallError", "Orchestrator", "Tokens"]


@dataclass(frozen=True)
class Job:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams  # stop strings are the router's; nodes never see them
    num_prior_output_tokens: int = 0
    chunks: tuple[tuple[int, int], ...] = ()  # RAG documents as (start, length) spans of the prompt


@dataclass
class Tokens:
    token_ids: list[int]
    logprobs: list = field(default_factory=list)


@dataclass
class Done:
    finish_reason: str
    num_cached_tokens: int
    route: Route
    prefill_s: float = 0.0
    transfer_s: float = 0.0


def _spans(job: Job) -> list[node_pb2.ChunkSpan]:
    return [node_pb2.ChunkSpan(start=start, length=length) for start, length in job.chunks]


@contextlib.contextmanager
def calling(address: str, call: str):
    """Turns a failed node call into a NodeCallError naming the node and the call."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise NodeCallError(exc.code(), exc.details() or exc.code().name, address, call) from exc


class Orchestrator:
    def __init__(self, registry: NodeRegistry, policy: Policy, rpc_timeout_s: float = 60.0,
                 retry: RetryConfig = RetryConfig(), metrics: RouterMetrics = ROUTER):
        self.registry = registry
        self.policy = policy
        self.rpc_timeout_s = rpc_timeout_s
        self.retry = retry
        self.metrics = metrics
        metrics.watch(registry)

    def route(self, job: Job) -> Route:
        """The first route of a job; NoRoute (-> UNAVAILABLE) when no healthy node can take it."""
        try:
            return self._route(job)
        except NoRoute:
            self.metrics.count_error(grpc.StatusCode.UNAVAILABLE)
            raise

    def _route(self, job: Job, exclude: set[str] = frozenset()) -> Route:
        nodes = [n for n in self.registry.snapshot() if n.address not in exclude]
        return self.policy(nodes, self.route_request(job))

    @staticmethod
    def route_request(job: Job) -> RouteRequest:
        prompt = job.prompt_token_ids
        keys = frozenset(content_hash(prompt[start:start + length]) for start, length in job.chunks)
        return RouteRequest(len(prompt), job.params.max_tokens, prompt, keys, sum(length for _, length in job.chunks))

    async def run(self, job: Job, route: Route) -> AsyncIterator[Tokens | Done]:
        progress, timer = Progress(job.request_id), RequestTimer(self.metrics, time.monotonic(), len(job.prompt_token_ids))
        outcome = "closed"
        request_id.set(job.request_id)  # this request's task: every log line below carries it
        self.metrics.running.inc()
        try:
            while True:
                try:
                    async for event in self._attempt(self._continuation(job, progress), route):
                        if isinstance(event, Done):
                            outcome = event.finish_reason
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
        return replace(job, request_id=progress.node_request_id(),
                       prompt_token_ids=job.prompt_token_ids + progress.sent,
                       num_prior_output_tokens=job.num_prior_output_tokens + len(progress.sent))

    async def _attempt(self, job: Job, route: Route):
        if job.params.max_tokens - job.num_prior_output_tokens < 1:  # every token went out before the failure
            yield Done("length", 0, route)
            return
        stream = self._colocated(job, route) if route.colocated else self._disaggregated(job, route)
        async for event in stream:
            yield event

    async def _recover(self, job: Job, progress: Progress, route: Route, exc: NodeCallError) -> Route:
        """The route of the next attempt after exc, or the error for the client."""
        self.metrics.node_errors.labels(exc.call or "route", exc.code.name).inc()
        progress.record(exc)
        if exc.code not in RETRYABLE:
            raise progress.give_up(exc)
        if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED and exc.call == "Reserve":
            progress.full.add(exc.address)
            progress.refused = True
        else:
            progress.dead |= await self._dead_nodes(route)
        while progress.retries < self.retry.max_retries:
            progress.retries += 1
            self.metrics.failovers.labels(exc.code.name).inc()
            log.warning("re-dispatching after %s (retry %d, %d tokens sent)", progress.errors[-1], progress.retries,
                        len(progress.sent))
            await asyncio.sleep(self.retry.backoff(progress.retries))
            try:
                return self._route(self._continuation(job, progress), progress.dead | progress.full)
            except NoRoute as no_route:
                exc = NodeCallError(grpc.StatusCode.UNAVAILABLE, str(no_route))
                progress.record(exc)
                progress.full.clear()  # reservations free up: the full nodes may take it next time
        raise progress.give_up(exc)

    async def _dead_nodes(self, route: Route) -> set[str]:
        addresses = {route.prefill.address, route.decode.address}
        down = await asyncio.gather(*(self.registry.confirm_failure(a) for a in addresses))
        return {a for a, is_down in zip(addresses, down) if is_down}

    def _node_sampling(self, job: Job) -> common_pb2.SamplingParams:
        msg = sampling_to_proto(job.params)
        del msg.stop[:]
        return msg

    def _stub(self, address: str, call: str):
        try:
            return self.registry.stub(address)
        except KeyError:
            raise NodeCallError(grpc.StatusCode.UNAVAILABLE, "the node left the cluster", address, call) from None

    async def _colocated(self, job: Job, route: Route):
        address = route.prefill.address
        request = node_pb2.NodeGenerateRequest(request_id=job.request_id, prompt_token_ids=job.prompt_token_ids,
                                               sampling=self._node_sampling(job), chunks=_spans(job),
                                               num_prior_output_tokens=job.num_prior_output_tokens)
        self.registry.track(address, "prefill_tokens", len(job.prompt_token_ids))
        self.registry.track(address, "decodes", 1)
        try:
            with calling(address, "Generate"):
                async for event in self._stream(self._stub(address, "Generate").Generate(request), route, address):
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
        decode = self._stub(address, "Reserve")
        reserve = await self._unary(address, "Reserve", decode.Reserve(node_pb2.ReserveRequest(
            request_id=job.request_id, num_prompt_tokens=len(job.prompt_token_ids),
            prefill_node_id=route.prefill.node_id), timeout=self.rpc_timeout_s))
        try:
            reply = await self._prefill(job, route, reserve.target)
        except BaseException:
            await self._abort(address, job.request_id)
            raise
        yield Tokens([reply.first_token_id], [logprob_from_proto(reply.logprob)] if reply.HasField("logprob") else [])
        if reply.finished:
            await self._abort(address, job.request_id)
            yield Done(reply.finish_reason, reply.num_cached_tokens, route, reply.timings.prefill_s, reply.timings.transfer_s)
            return
        request = node_pb2.DecodeRequest(
            request_id=job.request_id, prompt_token_ids=job.prompt_token_ids, first_token_id=reply.first_token_id,
            sampling=self._node_sampling(job), num_prior_output_tokens=job.num_prior_output_tokens)
        with calling(address, "Decode"):
            async for event in self._stream(decode.Decode(request), route, address, reply):
                yield event

    async def _prefill(self, job: Job, route: Route, target) -> node_pb2.PrefillReply:
        n, address = len(job.prompt_token_ids), route.prefill.address
        self.registry.track(address, "prefill_tokens", n)
        try:
            return await self._unary(address, "Prefill", self._stub(address, "Prefill").Prefill(node_pb2.PrefillRequest(
                request_id=job.request_id, prompt_token_ids=job.prompt_token_ids, sampling=self._node_sampling(job),
                target=target, num_prior_output_tokens=job.num_prior_output_tokens, chunks=_spans(job)),
                timeout=self.rpc_timeout_s))
        finally:
            self.registry.track(address, "prefill_tokens", -n)

    async def _unary(self, address: str, name: str, call):
        with calling(address, name), cancelled_when_down(self.registry.call_watch(address), call, address, name):
            return await call

    async def _stream(self, call, route: Route, address: str, prefill: node_pb2.PrefillReply | None = None):
        name = "Decode" if prefill is not None else "Generate"
        finished = False
        try:
            with cancelled_when_down(self.registry.call_watch(address), call, address, name):
                async for chunk in call:
                    if chunk.token_ids:
                        yield Tokens(list(chunk.token_ids), [logprob_from_proto(lp) for lp in chunk.logprobs])
                    if chunk.finished:
                        cached = prefill.num_cached_tokens if prefill is not None else chunk.num_cached_tokens
                        timings = prefill.timings if prefill is not None else None
                        finished = True  # the node ends the call itself: no cancel to log there
                        yield Done(chunk.finish_reason, cached, route, timings.prefill_s if timings else 0.0,
                                   timings.transfer_s if timings else 0.0)
                        return
            raise NodeCallError(grpc.StatusCode.UNAVAILABLE, "node stream ended without a final message", address, name)
        finally:
            if not finished:
                call.cancel()

    async def _abort(self, address: str, request_id: str) -> None:
        try:
            await self._stub(address, "Abort").Abort(common_pb2.AbortRequest(request_id=request_id), timeout=5.0)
        except (grpc.aio.AioRpcError, NodeCallError):
            pass  # the node is gone or forgot the request: its reservation expires on its own
