"""The decode role's gRPC boundary: `Reserve` and `Decode` (protobuf in, dataclasses to the worker,
protobuf out). node/servicer.py routes the Node service's calls here."""

from __future__ import annotations

from typing import AsyncIterator

import grpc

from splitserve.api.v1 import node_pb2
from splitserve.node_api import Reservation
from splitserve.rpc.convert import kv_target_to_proto, sampling_from_proto
from splitserve.rpc.node_messages import request_id_of, status_codes, token_chunk
from decode_node.worker import DecodeWorker


class DecodeServicer:
    def __init__(self, worker: DecodeWorker):
        self.worker = worker

    async def Reserve(self, request: node_pb2.ReserveRequest, context: grpc.aio.ServicerContext) -> node_pb2.ReserveReply:
        async with status_codes(context):  # bad input: INVALID_ARGUMENT; an adapter not served here: NOT_FOUND
            reservation = await self.worker.reserve(
                request_id_of(request), request.num_prompt_tokens, list(request.prompt_token_ids) or None,
                request.cache_salt if request.HasField("cache_salt") else None,
                request.lora if request.HasField("lora") else None)
        if reservation is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"decode node {self.worker.target.node_id}: not "
                                f"enough free KV blocks for {request.num_prompt_tokens} tokens")
        return _reserve_reply(reservation)

    async def Decode(self, request: node_pb2.DecodeRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[node_pb2.TokenChunk]:
        async with status_codes(context):
            params = sampling_from_proto(request.sampling)
            outputs = self.worker.decode(request_id_of(request), list(request.prompt_token_ids), request.first_token_id,
                                         params, request.num_prior_output_tokens)
            async for out in outputs:
                yield token_chunk(out)


def _reserve_reply(reservation: Reservation) -> node_pb2.ReserveReply:
    return node_pb2.ReserveReply(target=kv_target_to_proto(reservation.target), num_blocks=reservation.num_blocks,
                                 num_cached_tokens=reservation.num_cached_tokens)
