"""The node's gRPC boundary: protobuf in, engine dataclasses to the workers, protobuf out.

Failures are status codes: INVALID_ARGUMENT for bad input, RESOURCE_EXHAUSTED when KV blocks
run out, UNAVAILABLE when a KV transfer fails, FAILED_PRECONDITION for calls the role does not take.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from splitserve.api.v1 import common_pb2, node_pb2, node_pb2_grpc
from splitserve.engine import RequestOutput
from splitserve.kvtransfer import TransferError
from splitserve.kvtransfer.base import MAX_REQUEST_ID_CHARS
from splitserve.rpc.convert import logprob_to_proto, sampling_from_proto
from splitserve.runtime.output_stream import EngineError, run_streaming

MAX_INGEST_DOCUMENTS = 256  # one call computes them all on the engine thread: bound it


@contextlib.asynccontextmanager
async def _status_codes(context):
    """Maps the workers' failures to status codes: bad input, failed transfer, failed engine step."""
    try:
        yield
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except TransferError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"KV transfer failed: {exc}")
    except EngineError as exc:
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))


class NodeServicer(node_pb2_grpc.NodeServicer):
    def __init__(self, node_id: str, role: str, engine_loop, prefill=None, decode=None, chunk_path=None):
        self.node_id, self.role = node_id, role
        self.engine_loop = engine_loop
        self.prefill_worker, self.decode_worker = prefill, decode
        self.chunk_path = chunk_path  # node.chunks.ChunkPath (prefill and mixed nodes with a chunk cache)

    async def Prefill(self, request: node_pb2.PrefillRequest, context):
        worker = await self._need(self.prefill_worker, "Prefill", context)
        async with _status_codes(context):
            params = sampling_from_proto(request.sampling)
            return await worker.prefill(_request_id(request), list(request.prompt_token_ids), params, request.target,
                                        request.num_prior_output_tokens, _spans(request.chunks))

    async def Reserve(self, request: node_pb2.ReserveRequest, context):
        worker = await self._need(self.decode_worker, "Reserve", context)
        try:
            reply = await worker.reserve(_request_id(request), request.num_prompt_tokens)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if reply is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"decode node {self.node_id}: not enough free KV blocks for {request.num_prompt_tokens} tokens")
        return reply

    async def Decode(self, request: node_pb2.DecodeRequest, context):
        worker = await self._need(self.decode_worker, "Decode", context)
        async with _status_codes(context):
            params = sampling_from_proto(request.sampling)
            outputs = worker.decode(_request_id(request), list(request.prompt_token_ids), request.first_token_id,
                                    params, request.num_prior_output_tokens)
            async for out in outputs:
                yield _chunk(out)

    async def Generate(self, request: node_pb2.NodeGenerateRequest, context):
        if self.prefill_worker is not None or self.decode_worker is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Generate needs a mixed node; this one is {self.role}")
        prompt, prior = list(request.prompt_token_ids), request.num_prior_output_tokens
        async with _status_codes(context):
            rid = _request_id(request)
            params = sampling_from_proto(request.sampling)
            if request.chunks and self.chunk_path is not None:
                outputs = self.chunk_path.generate(rid, prompt, params, prior, _spans(request.chunks))
            else:
                admit = lambda engine: engine.add_request(prompt, params, rid, num_prior_output_tokens=prior)
                outputs = run_streaming(self.engine_loop, rid, admit)
            async for out in outputs:
                yield _chunk(out)

    async def Abort(self, request: common_pb2.AbortRequest, context):
        rid = request.request_id
        found = False
        for worker in (self.prefill_worker, self.decode_worker):
            if worker is not None:
                found |= await worker.abort(rid)
        found |= await asyncio.wrap_future(self.engine_loop.call(lambda engine: engine.abort(rid)))
        return common_pb2.AbortReply(found=found)

    async def Stats(self, request, context):
        s = await asyncio.wrap_future(self.engine_loop.call(lambda engine: engine.stats()))
        worker = self.decode_worker
        return node_pb2.NodeStats(
            node_id=self.node_id, role=self.role, num_waiting=s.num_waiting, num_running=s.num_running,
            num_pending_prefill_tokens=s.num_pending_prefill_tokens, num_total_blocks=s.num_total_blocks,
            num_free_blocks=s.num_free_blocks, num_used_blocks=s.num_used_blocks, num_reserved=s.num_reserved,
            block_size=s.block_size, kv_address=worker.kv_address if worker else "",
            transport=worker.transport if worker else "", **self._chunk_stats())

    def _chunk_stats(self) -> dict:
        if self.chunk_path is None:
            return {}
        stats = self.chunk_path.stats()
        fields = {f.name for f in node_pb2.ChunkCacheStats.DESCRIPTOR.fields}
        return {"chunk_keys": stats.pop("chunk_keys"),
                "chunk_cache": node_pb2.ChunkCacheStats(**{k: v for k, v in stats.items() if k in fields})}

    async def IngestDocuments(self, request: node_pb2.IngestRequest, context):
        if self.chunk_path is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"node {self.node_id} ({self.role}) has no chunk cache (--chunk-cache-bytes 0 or a decode node)")
        if not request.documents or any(not d for d in request.documents):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "documents must be a non-empty list of non-empty strings")
        if len(request.documents) > MAX_INGEST_DOCUMENTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_INGEST_DOCUMENTS} documents per "
                                f"IngestDocuments call, got {len(request.documents)} (send them in batches)")
        async with _status_codes(context):
            stored = await self.chunk_path.ingest(list(request.documents), request.in_context)
        return node_pb2.IngestReply(num_chunks=len(stored), num_tokens=sum(n for _, n in stored),
                                    chunk_hashes=[h for h, _ in stored])

    async def _need(self, worker, call: str, context):
        if worker is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{call} is not served by a {self.role} node")
        return worker


def _request_id(request) -> str:
    """The request's id; ValueError (-> INVALID_ARGUMENT) unless it has 1 to MAX_REQUEST_ID_CHARS characters
    (an empty id would be renamed by the engine and its outputs never reach the caller)."""
    rid = request.request_id
    if not 0 < len(rid) <= MAX_REQUEST_ID_CHARS:
        raise ValueError(f"request_id must have 1 to {MAX_REQUEST_ID_CHARS} characters, got {len(rid)}")
    return rid


def _spans(chunks) -> list[tuple[int, int]]:
    return [(c.start, c.length) for c in chunks]


def _chunk(out: RequestOutput) -> node_pb2.TokenChunk:
    return node_pb2.TokenChunk(token_ids=out.new_token_ids, logprobs=[logprob_to_proto(lp) for lp in out.new_logprobs],
                               finished=out.finished, finish_reason=out.finish_reason or "",
                               num_cached_tokens=out.num_cached_tokens)
