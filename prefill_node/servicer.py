"""The prefill role's gRPC boundary: `Prefill` and `IngestDocuments` (protobuf in, dataclasses to the
worker and the chunk path, protobuf out). node/servicer.py routes the Node service's calls here."""

from __future__ import annotations

import grpc

from splitserve.api.v1 import common_pb2, node_pb2
from splitserve.node_api import PrefillResult
from splitserve.rpc.convert import kv_target_from_proto, sampling_from_proto
from splitserve.rpc.logprobs import logprob_to_proto, prompt_logprobs_to_proto
from splitserve.rpc.node_messages import request_id_of, spans_of, status_codes
from prefill_node.chunks import ChunkPath
from prefill_node.worker import PrefillWorker

MAX_INGEST_DOCUMENTS = 256  # one call computes them all on the engine thread: bound it


class PrefillServicer:
    def __init__(self, worker: PrefillWorker):
        self.worker = worker

    async def Prefill(self, request: node_pb2.PrefillRequest, context: grpc.aio.ServicerContext) -> node_pb2.PrefillReply:
        async with status_codes(context):
            params = sampling_from_proto(request.sampling)
            result = await self.worker.prefill(request_id_of(request), list(request.prompt_token_ids), params,
                                               kv_target_from_proto(request.target), request.num_prior_output_tokens,
                                               spans_of(request.chunks), request.num_target_cached_tokens)
            return _prefill_reply(result)


class IngestServicer:
    """IngestDocuments on prefill and mixed nodes with a chunk cache."""

    def __init__(self, chunk_path: ChunkPath):
        self.chunk_path = chunk_path

    async def IngestDocuments(self, request: node_pb2.IngestRequest,
                              context: grpc.aio.ServicerContext) -> node_pb2.IngestReply:
        if not request.documents or any(not d for d in request.documents):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "documents must be a non-empty list of non-empty strings")
        if len(request.documents) > MAX_INGEST_DOCUMENTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_INGEST_DOCUMENTS} documents per "
                                f"IngestDocuments call, got {len(request.documents)} (send them in batches)")
        async with status_codes(context):
            stored = await self.chunk_path.ingest(list(request.documents), request.in_context)
        return node_pb2.IngestReply(num_chunks=len(stored), num_tokens=sum(n for _, n in stored),
                                    chunk_hashes=[h for h, _ in stored])


def _prefill_reply(result: PrefillResult) -> node_pb2.PrefillReply:
    reply = node_pb2.PrefillReply(
        first_token_id=result.first_token_id, finished=result.finished, finish_reason=result.finish_reason,
        num_cached_tokens=result.num_cached_tokens, kv_bytes=result.kv_bytes,
        timings=common_pb2.Timings(prefill_s=result.prefill_s, transfer_s=result.transfer_s),
        num_reused_tokens=result.num_reused_tokens, num_computed_tokens=result.num_computed_tokens,
        prompt_logprobs=prompt_logprobs_to_proto(result.prompt_logprobs))
    if result.logprob is not None:
        reply.logprob.CopyFrom(logprob_to_proto(result.logprob))
    return reply
