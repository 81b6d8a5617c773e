"""The Node gRPC service of one node: routes each call to its role's servicer and answers the
calls every role takes.

Prefill and IngestDocuments go to prefill_node/servicer.py, Reserve and Decode to
decode_node/servicer.py; a call the node's role does not take gets FAILED_PRECONDITION. Handled
here: the mixed role's Generate (both phases in one engine, no transfer; a prefill node's too when the
answer is one token, its prefill's first: nothing to decode, nothing to transfer; a decode node's for a short
prompt, the router's conditional disaggregation: the prefill costs less than the hand-off), Embed (prefill and mixed
nodes: a prompt's pooled final hidden states, nothing transferred), Abort and Stats.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

import grpc

from splitserve.api.v1 import common_pb2, node_pb2, node_pb2_grpc
from splitserve.engine.pooling import Pooling, PoolingParams
from splitserve.prefixstore.node_path import PrefixStore, shared_admission, storing_outputs
from splitserve.rpc.convert import sampling_from_proto
from splitserve.rpc.node_messages import refuse, request_id_of, spans_of, status_codes, token_chunk
from splitserve.rpc.server import GrpcServer
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.output_stream import run_streaming
from decode_node.servicer import DecodeServicer
from prefill_node.chunks import ChunkPath, can_blend
from prefill_node.servicer import IngestServicer, PrefillServicer

log = logging.getLogger(__name__)
SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["Node"].full_name


class Abortable(Protocol):
    async def abort(self, rid: str) -> bool:
        """Forgets the request (its transfer, its reservation); True when it was known."""


@dataclass(frozen=True)
class Roles:
    """What a node serves besides the engine: set for its role, None otherwise."""

    prefill: PrefillServicer | None = None
    decode: DecodeServicer | None = None
    chunk_path: ChunkPath | None = None  # prefill and mixed nodes with a chunk cache
    workers: tuple[Abortable, ...] = ()
    prefix_store: PrefixStore | None = None  # nodes with --prefix-store-url


class NodeServicer(node_pb2_grpc.NodeServicer):
    def __init__(self, node_id: str, role: str, engine_loop: EngineLoop, roles: Roles):
        self.node_id, self.role = node_id, role
        self.engine_loop = engine_loop
        self.roles = roles
        self.ingest = IngestServicer(roles.chunk_path) if roles.chunk_path is not None else None

    def add_to(self, server: GrpcServer) -> None:
        node_pb2_grpc.add_NodeServicer_to_server(self, server.server)

    async def Prefill(self, request: node_pb2.PrefillRequest, context: grpc.aio.ServicerContext):
        if self.roles.prefill is None:
            await refuse(context, f"Prefill is not served by a {self.role} node")
        return await self.roles.prefill.Prefill(request, context)

    async def IngestDocuments(self, request: node_pb2.IngestRequest, context: grpc.aio.ServicerContext):
        if self.ingest is None:
            await refuse(context, f"node {self.node_id} ({self.role}) has no chunk cache "
                         "(--chunk-cache-bytes 0 or a decode node)")
        return await self.ingest.IngestDocuments(request, context)

    async def Reserve(self, request: node_pb2.ReserveRequest, context: grpc.aio.ServicerContext):
        if self.roles.decode is None:
            await refuse(context, f"Reserve is not served by a {self.role} node")
        return await self.roles.decode.Reserve(request, context)

    async def Decode(self, request: node_pb2.DecodeRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[node_pb2.TokenChunk]:
        if self.roles.decode is None:
            await refuse(context, f"Decode is not served by a {self.role} node")
        async for chunk in self.roles.decode.Decode(request, context):
            yield chunk

    async def Generate(self, request: node_pb2.NodeGenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[node_pb2.TokenChunk]:
        one_token = request.sampling.max_tokens - request.num_prior_output_tokens == 1
        if self.roles.prefill is not None and not one_token:
            await refuse(context, f"Generate needs a mixed or decode node, or a prefill node for a one-token answer; "
                         f"this one is {self.role}")
        prompt, prior = list(request.prompt_token_ids), request.num_prior_output_tokens
        async with status_codes(context):
            rid = request_id_of(request)
            params = sampling_from_proto(request.sampling)
            if request.chunks and self.roles.chunk_path is not None and can_blend(params):
                outputs = self.roles.chunk_path.generate(rid, prompt, params, prior, spans_of(request.chunks))
            else:
                outputs = self._generate(rid, prompt, params, prior)
            async for out in outputs:
                yield token_chunk(out)

    async def _generate(self, rid: str, prompt: list[int], params, prior: int) -> AsyncIterator:
        """The plain path: the engine alone, with the prompt blocks the prefix store holds (if the node has one),
        storing there the prompt's blocks after its prefill and the output's once it finished."""
        admit = lambda engine: engine.add_request(prompt, params, rid, num_prior_output_tokens=prior)
        store = self.roles.prefix_store
        admission = await shared_admission(store, prompt, params, admit)
        async for out in storing_outputs(store, prompt, params, run_streaming(self.engine_loop, rid, admission.admit)):
            admission.prefilled()
            yield out

    async def Embed(self, request: node_pb2.NodeEmbedRequest,
                    context: grpc.aio.ServicerContext) -> node_pb2.NodeEmbedReply:
        if self.roles.decode is not None:
            await refuse(context, f"Embed needs a prefill or mixed node; this one is {self.role}")
        async with status_codes(context):
            rid, prompt = request_id_of(request), list(request.prompt_token_ids)
            pooling = PoolingParams(request.pooling or Pooling.LAST, not request.no_normalize, request.priority,
                                    request.cache_salt if request.HasField("cache_salt") else None)
            admit = lambda engine: engine.add_embedding(prompt, pooling, rid)
            async for out in run_streaming(self.engine_loop, rid, admit):
                if out.finished and out.embedding is not None:
                    return node_pb2.NodeEmbedReply(embedding=out.embedding, num_cached_tokens=out.num_cached_tokens)
        await context.abort(grpc.StatusCode.ABORTED, f"request {rid} was aborted before its prompt ran")

    async def Abort(self, request: common_pb2.AbortRequest, context: grpc.aio.ServicerContext) -> common_pb2.AbortReply:
        rid = request.request_id
        found = False
        for worker in self.roles.workers:
            found |= await worker.abort(rid)
        found |= await asyncio.wrap_future(self.engine_loop.call(lambda engine: engine.abort(rid)))
        return common_pb2.AbortReply(found=found)

    async def LoadLoraAdapter(self, request: node_pb2.LoraAdapterRequest, context: grpc.aio.ServicerContext):
        """Reads the adapter beside the engine thread (steps go on), then serves it from the engine's."""
        async with status_codes(context):
            adapter = await asyncio.to_thread(self.engine_loop.engine.read_adapter, request.name, request.path)
            await asyncio.wrap_future(self.engine_loop.call(lambda engine: engine.add_adapter(adapter)))
        log.info("LoRA adapter %s loaded from %s", request.name, request.path)
        return node_pb2.LoraAdapterReply()

    async def UnloadLoraAdapter(self, request: node_pb2.LoraAdapterRequest, context: grpc.aio.ServicerContext):
        try:
            await asyncio.wrap_future(self.engine_loop.call(lambda engine: engine.remove_adapter(request.name)))
        except KeyError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.args[0])
        log.info("LoRA adapter %s unloaded", request.name)
        return node_pb2.LoraAdapterReply()

    async def Stats(self, request: node_pb2.StatsRequest, context: grpc.aio.ServicerContext) -> node_pb2.NodeStats:
        after = request.kv_blocks_after if request.kv_blocks_node_id == self.node_id else -1  # -1: all it holds
        want = request.want_kv_blocks

        def read(engine):
            changes = engine.pool.changes(after) if want and engine.pool.enable_prefix_caching else None
            return engine.stats(), changes
        s, changes = await asyncio.wrap_future(self.engine_loop.call(read))
        kv_blocks = node_pb2.KvBlocks(snapshot=changes.snapshot, stored=changes.stored, removed=changes.removed,
                                      seq=changes.seq) if changes is not None else None
        target = self.roles.decode.worker.target if self.roles.decode is not None else None
        return node_pb2.NodeStats(
            node_id=self.node_id, role=self.role, num_waiting=s.num_waiting, num_running=s.num_running,
            num_pending_prefill_tokens=s.num_pending_prefill_tokens, num_total_blocks=s.num_total_blocks,
            num_free_blocks=s.num_free_blocks, num_used_blocks=s.num_used_blocks, num_reserved=s.num_reserved,
            block_size=s.block_size, kv_address=target.kv_address if target else "",
            transport=target.transport if target else "", lora_adapters=s.lora_adapters,
            prefix_caching=s.prefix_caching, sends_partial_kv=self.roles.prefill is not None, kv_blocks=kv_blocks,
            lora_load_ids=dict(s.lora_load_ids), startup_lora_adapters=s.startup_lora_adapters,
            **self._chunk_stats())

    def _chunk_stats(self) -> dict:
        if self.roles.chunk_path is None:
            return {}
        stats = self.roles.chunk_path.stats()
        fields = {f.name for f in node_pb2.ChunkCacheStats.DESCRIPTOR.fields}
        return {"chunk_keys": stats.pop("chunk_keys"),
                "chunk_cache": node_pb2.ChunkCacheStats(**{k: v for k, v in stats.items() if k in fields})}
