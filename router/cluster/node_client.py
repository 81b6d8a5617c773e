"""The router's client of the Node service: dataclasses in, protobuf on the wire, dataclasses out.

The orchestrator calls it with Jobs and gets splitserve.node_api dataclasses back. Every call
is named in the NodeCallError it fails with (the node's address and the call), and is cancelled
when its node turns unhealthy (router/cluster/stall.py). Stop strings are the router's: nodes
never see them.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, Callable

import grpc

from splitserve.api.v1 import common_pb2, node_pb2, node_pb2_grpc
from splitserve.engine.pooling import PoolingParams
from splitserve.node_api import PrefillResult, Reservation, TokenChunk
from splitserve.rpc.convert import kv_target_from_proto, kv_target_to_proto, sampling_to_proto
from splitserve.rpc.logprobs import logprob_from_proto, prompt_logprobs_from_proto
from router.cluster.failover import NodeCallError
from router.cluster.jobs import Job
from router.cluster.policies import Route
from router.cluster.stall import CallWatch, cancelled_when_down

ABORT_TIMEOUT_S = 5.0


@contextlib.contextmanager
def calling(address: str, call: str):
    """Turns a failed node call into a NodeCallError naming the node and the call."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise NodeCallError(exc.code(), exc.details() or exc.code().name, address, call) from exc


class NodeClient:
    def __init__(self, channel_of: Callable[[str], grpc.aio.Channel], watch_of: Callable[[str], CallWatch | None],
                 rpc_timeout_s: float = 60.0):
        self.channel_of = channel_of  # KeyError for a node that left
        self.watch_of = watch_of
        self.rpc_timeout_s = rpc_timeout_s
        self._stubs: dict[str, tuple[grpc.aio.Channel, node_pb2_grpc.NodeStub]] = {}  # address -> its channel's stub

    async def reserve(self, job: Job, route: Route) -> Reservation:
        """The route's decode node's blocks for the job's KV (see reserve_request)."""
        request, address = reserve_request(job, route), route.decode.address
        reply = await self._unary(address, "Reserve", self._stub(address, "Reserve").Reserve(
            request, timeout=self.rpc_timeout_s))
        return Reservation(kv_target_from_proto(reply.target), reply.num_blocks, reply.num_cached_tokens)

    async def prefill(self, address: str, job: Job, reservation: Reservation) -> PrefillResult:
        request = node_pb2.PrefillRequest(
            request_id=job.request_id, prompt_token_ids=job.prompt_token_ids, sampling=_sampling(job),
            target=kv_target_to_proto(reservation.target), num_prior_output_tokens=job.num_prior_output_tokens,
            chunks=_spans(job), num_target_cached_tokens=reservation.num_cached_tokens)
        reply = await self._unary(address, "Prefill", self._stub(address, "Prefill").Prefill(
            request, timeout=self.rpc_timeout_s))
        return PrefillResult(reply.first_token_id, logprob_from_proto(reply.logprob) if reply.HasField("logprob") else None,
                             reply.finished, reply.finish_reason, reply.num_cached_tokens, reply.kv_bytes,
                             reply.timings.prefill_s, reply.timings.transfer_s, reply.num_reused_tokens,
                             reply.num_computed_tokens, prompt_logprobs_from_proto(reply.prompt_logprobs))

    def decode(self, address: str, job: Job, first_token_id: int) -> AsyncIterator[TokenChunk]:
        sampling = _sampling(job)
        sampling.ClearField("prompt_logprobs")  # the prefill node scored the prompt
        request = node_pb2.DecodeRequest(
            request_id=job.request_id, prompt_token_ids=job.prompt_token_ids, first_token_id=first_token_id,
            sampling=sampling, num_prior_output_tokens=job.num_prior_output_tokens)
        return self._stream(address, "Decode", lambda stub: stub.Decode(request))

    def generate(self, address: str, job: Job) -> AsyncIterator[TokenChunk]:
        request = node_pb2.NodeGenerateRequest(request_id=job.request_id, prompt_token_ids=job.prompt_token_ids,
                                               sampling=_sampling(job), chunks=_spans(job),
                                               num_prior_output_tokens=job.num_prior_output_tokens)
        return self._stream(address, "Generate", lambda stub: stub.Generate(request))

    async def embed(self, address: str, request_id: str, prompt: list[int], params: PoolingParams) -> list[float]:
        """The prompt's embedding."""
        request = node_pb2.NodeEmbedRequest(request_id=request_id, prompt_token_ids=prompt, pooling=params.kind.value,
                                            no_normalize=not params.normalize, priority=params.priority,
                                            cache_salt=params.cache_salt)
        reply = await self._unary(address, "Embed", self._stub(address, "Embed").Embed(
            request, timeout=self.rpc_timeout_s))
        return list(reply.embedding)

    async def abort(self, address: str, request_id: str) -> None:
        """Best effort: a node that is gone or forgot the request lets its reservation expire on its own."""
        try:
            await self._stub(address, "Abort").Abort(common_pb2.AbortRequest(request_id=request_id),
                                                     timeout=ABORT_TIMEOUT_S)
        except (grpc.aio.AioRpcError, NodeCallError):
            pass

    def _stub(self, address: str, call: str) -> node_pb2_grpc.NodeStub:
        try:
            channel = self.channel_of(address)
        except KeyError:
            self._stubs.pop(address, None)
            raise NodeCallError(grpc.StatusCode.UNAVAILABLE, "the node left the cluster", address, call) from None
        cached = self._stubs.get(address)
        if cached is None or cached[0] is not channel:  # first call, or the node was added again
            cached = self._stubs[address] = (channel, node_pb2_grpc.NodeStub(channel))
        return cached[1]

    async def _unary(self, address: str, name: str, call):
        with calling(address, name), cancelled_when_down(self.watch_of(address), call, address, name):
            return await call

    async def _stream(self, address: str, name: str, start: Callable) -> AsyncIterator[TokenChunk]:
        call = start(self._stub(address, name))
        finished = False
        try:
            with calling(address, name), cancelled_when_down(self.watch_of(address), call, address, name):
                async for chunk in call:
                    finished = chunk.finished  # the node ends the call itself: no cancel to log there
                    yield TokenChunk(list(chunk.token_ids), [logprob_from_proto(lp) for lp in chunk.logprobs],
                                     chunk.finished, chunk.finish_reason, chunk.num_cached_tokens,
                                     prompt_logprobs_from_proto(chunk.prompt_logprobs))
                    if finished:
                        return
            raise NodeCallError(grpc.StatusCode.UNAVAILABLE, "node stream ended without a final message", address, name)
        finally:
            if not finished:
                call.cancel()


def reserve_request(job: Job, route: Route) -> node_pb2.ReserveRequest:
    """Reserve for the job on the route's decode node. The prompt goes along (the decode node then takes the leading
    blocks its prefix cache holds, an earlier turn, and the transfer carries the rest) unless the request has
    documents (blended KV), the prefill node is one that would send the whole KV anyway, or the request's LoRA
    adapter is one the decode node does not say it reuses blocks of (NodeStats.lora_load_ids: an older release)."""
    prefill, decode, lora = route.prefill, route.decode, job.params.lora
    request = node_pb2.ReserveRequest(request_id=job.request_id, num_prompt_tokens=len(job.prompt_token_ids),
                                      prefill_node_id=prefill.node_id)
    if prefill.sends_partial_kv and not job.chunks and (lora is None or decode.lora_load_id(lora) is not None):
        request.prompt_token_ids.extend(job.prompt_token_ids)
        if job.params.cache_salt is not None:
            request.cache_salt = job.params.cache_salt
        if lora is not None:
            request.lora = lora
    return request


def _sampling(job: Job) -> common_pb2.SamplingParams:
    msg = sampling_to_proto(job.params)
    del msg.stop[:]  # text the router applies; nodes read token ids
    return msg


def _spans(job: Job) -> list[node_pb2.ChunkSpan]:
    return [node_pb2.ChunkSpan(start=start, length=length) for start, length in job.chunks]
