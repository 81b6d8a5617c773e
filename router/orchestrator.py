"""Runs one request across the cluster and yields its tokens as they come.

Disaggregated: Reserve KV blocks on the decode node -> Prefill on the prefill node (which
streams the KV to the reservation and returns the first token, sent on at once) -> Decode
on the decode node streams the rest. Colocated: Generate on one mixed node. Closing the
iterator early (client gone, stop string) cancels the node calls, which abort there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc

from splitserve.api.v1 import common_pb2, node_pb2
from splitserve.engine import SamplingParams
from splitserve.serving.convert import logprob_from_proto, sampling_to_proto
from router.nodes import NodeRegistry
from router.policies import Policy, Route, RouteRequest


@dataclass(frozen=True)
class Job:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams  # stop strings are the router's; nodes never see them
    num_prior_output_tokens: int = 0


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


class NodeCallError(Exception):
    """A node call failed; carries the status code for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class Orchestrator:
    def __init__(self, registry: NodeRegistry, policy: Policy, rpc_timeout_s: float = 60.0):
        self.registry = registry
        self.policy = policy
        self.rpc_timeout_s = rpc_timeout_s

    def route(self, job: Job) -> Route:
        request = RouteRequest(len(job.prompt_token_ids), job.params.max_tokens)
        return self.policy(self.registry.snapshot(), request)

    async def run(self, job: Job, route: Route) -> AsyncIterator[Tokens | Done]:
        try:
            stream = self._colocated(job, route) if route.colocated else self._disaggregated(job, route)
            async for event in stream:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise NodeCallError(exc.code(), f"node call failed: {exc.details()}") from exc

    def _node_sampling(self, job: Job) -> common_pb2.SamplingParams:
        msg = sampling_to_proto(job.params)
        del msg.stop[:]
        return msg

    async def _colocated(self, job: Job, route: Route):
        address = route.prefill.address
        request = node_pb2.NodeGenerateRequest(request_id=job.request_id, prompt_token_ids=job.prompt_token_ids,
                                               sampling=self._node_sampling(job),
                                               num_prior_output_tokens=job.num_prior_output_tokens)
        self.registry.track(address, "prefill_tokens", len(job.prompt_token_ids))
        self.registry.track(address, "decodes", 1)
        try:
            async for event in self._stream(self.registry.stub(address).Generate(request), route):
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
        decode = self.registry.stub(route.decode.address)
        reserve = await decode.Reserve(node_pb2.ReserveRequest(
            request_id=job.request_id, num_prompt_tokens=len(job.prompt_token_ids),
            prefill_node_id=route.prefill.node_id), timeout=self.rpc_timeout_s)
        try:
            reply = await self._prefill(job, route, reserve.target)
        except BaseException:
            await self._abort(route.decode.address, job.request_id)
            raise
        yield Tokens([reply.first_token_id], [logprob_from_proto(reply.logprob)] if reply.HasField("logprob") else [])
        if reply.finished:
            await self._abort(route.decode.address, job.request_id)
            yield Done(reply.finish_reason, reply.num_cached_tokens, route, reply.timings.prefill_s, reply.timings.transfer_s)
            return
        request = node_pb2.DecodeRequest(
            request_id=job.request_id, prompt_token_ids=job.prompt_token_ids, first_token_id=reply.first_token_id,
            sampling=self._node_sampling(job), num_prior_output_tokens=job.num_prior_output_tokens)
        async for event in self._stream(decode.Decode(request), route, reply):
            yield event

    async def _prefill(self, job: Job, route: Route, target) -> node_pb2.PrefillReply:
        n = len(job.prompt_token_ids)
        self.registry.track(route.prefill.address, "prefill_tokens", n)
        try:
            return await self.registry.stub(route.prefill.address).Prefill(node_pb2.PrefillRequest(
                request_id=job.request_id, prompt_token_ids=job.prompt_token_ids, sampling=self._node_sampling(job),
                target=target, num_prior_output_tokens=job.num_prior_output_tokens), timeout=self.rpc_timeout_s)
        finally:
            self.registry.track(route.prefill.address, "prefill_tokens", -n)

    async def _stream(self, call, route: Route, prefill: node_pb2.PrefillReply | None = None):
        try:
            async for chunk in call:
                if chunk.token_ids:
                    yield Tokens(list(chunk.token_ids), [logprob_from_proto(lp) for lp in chunk.logprobs])
                if chunk.finished:
                    cached = prefill.num_cached_tokens if prefill is not None else chunk.num_cached_tokens
                    timings = prefill.timings if prefill is not None else None
                    yield Done(chunk.finish_reason, cached, route, timings.prefill_s if timings else 0.0,
                               timings.transfer_s if timings else 0.0)
                    return
            raise NodeCallError(grpc.StatusCode.UNAVAILABLE, "node stream ended without a final message")
        finally:
            call.cancel()

    async def _abort(self, address: str, request_id: str) -> None:
        try:
            await self.registry.stub(address).Abort(common_pb2.AbortRequest(request_id=request_id), timeout=5.0)
        except grpc.aio.AioRpcError:
            pass  # the node is gone or forgot the request: its reservation expires on its own
