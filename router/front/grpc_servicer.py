"""The router's gRPC boundary: protobuf in, Jobs to the orchestrator, protobuf out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import grpc

from splitserve.api.v1 import common_pb2, router_pb2, router_pb2_grpc
from splitserve.rpc.convert import sampling_from_proto
from splitserve.rpc.logprobs import logprob_to_proto, prompt_logprobs_to_proto
from splitserve.rpc.server import GrpcServer
from splitserve.engine.pooling import PoolingParams
from splitserve.engine.tokenizer import ChatFormat
from router.front.completion import Finish, Piece, completion
from router.front.embeddings_api import MAX_EMBEDDING_INPUTS
from router.front.auth import ApiKeys
from router.front.intake import Frontend
from router.cluster.embedder import Embedder
from router.cluster.orchestrator import Job, NodeCallError, Orchestrator
from router.cluster.policies import NoRoute

log = logging.getLogger(__name__)
SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, frontend: Frontend, orchestrator: Orchestrator, api_keys: ApiKeys | None = None):
        self.frontend, self.api_keys = frontend, api_keys or ApiKeys()
        self.orchestrator = orchestrator
        self.embedder = Embedder(orchestrator)
        self._active: dict[str, asyncio.Task] = {}

    def add_to(self, server: GrpcServer) -> None:
        router_pb2_grpc.add_RouterServicer_to_server(self, server.server)

    async def Generate(self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            job = self._job(request, context)
            route = self.orchestrator.route(job)
        except ValueError as exc:
            self.orchestrator.metrics.count_error(grpc.StatusCode.INVALID_ARGUMENT)  # issue 4: metrics
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NoRoute as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        start = time.monotonic()
        self._active[job.request_id] = asyncio.current_task()
        try:
            async for response in self._responses(job, route, start):
                yield response
        except NodeCallError as exc:
            log.warning("request %s failed: %s", job.request_id, exc)
            await context.abort(exc.code, str(exc))
        finally:
            self._active.pop(job.request_id, None)

    def _job(self, request: router_pb2.GenerateRequest, context) -> Job:
        params = sampling_from_proto(request.sampling, with_stop_strings=True)
        kind = request.WhichOneof("input")
        prompt_ids, chunks = self.frontend.prompt_and_chunks(
            prompt=request.prompt if kind == "prompt" else None,
            token_ids=list(request.prompt_token_ids.ids) if kind == "prompt_token_ids" else None,
            messages=[{"role": m.role, "content": m.content} for m in request.chat.messages] if kind == "chat" else None,
            documents=list(request.documents), chat_format=_chat_format(request.chat) if kind == "chat" else None,
            truncate=request.truncate_prompt_tokens if request.HasField("truncate_prompt_tokens") else None,
            add_special_tokens=request.add_special_tokens if request.HasField("add_special_tokens") else None)
        return self.frontend.job(prompt_ids, params, request.request_id, chunks, self._caller(context))

    async def _responses(self, job: Job, route, start: float):
        async for item in completion(self.frontend.tokenizer, self.orchestrator, job, route, start):
            if isinstance(item, Piece):
                yield _chunk(item)
            else:
                yield _final(job, item)

    async def Embed(self, request: router_pb2.EmbedRequest, context: grpc.aio.ServicerContext):
        """One embedding per input, computed on prefill or mixed nodes (router/cluster/embedder.py)."""
        try:
            prompts = self._embedding_inputs(request)
            salt = self.frontend.salt_for(self._caller(context),
                                          request.cache_salt if request.HasField("cache_salt") else None)
            params = PoolingParams(request.pooling or self.frontend.embedding_pooling, not request.no_normalize,
                                   request.priority, salt)
            embedded = await self.embedder.embed(f"embd-{uuid.uuid4().hex}", prompts, params)
        except ValueError as exc:
            self.orchestrator.metrics.count_error(grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NoRoute as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except NodeCallError as exc:
            await context.abort(exc.code, str(exc))
        tokens = sum(map(len, prompts))
        return router_pb2.EmbedResponse(embeddings=[router_pb2.Embedding(values=v) for v in embedded],
                                        usage=common_pb2.Usage(prompt_tokens=tokens))

    def _caller(self, context) -> str:
        """Who sent the call (auth.ApiKeys.caller of its metadata): its cache salt's owner."""
        return self.api_keys.caller(dict(context.invocation_metadata() or ()))

    def _embedding_inputs(self, request: router_pb2.EmbedRequest) -> list[list[int]]:
        if not 0 < len(request.inputs) <= MAX_EMBEDDING_INPUTS:
            raise ValueError(f"inputs: 1 to {MAX_EMBEDDING_INPUTS} per request, got {len(request.inputs)}")
        return [self._embedding_input(item) for item in request.inputs]

    def _embedding_input(self, item: router_pb2.EmbedInput) -> list[int]:
        kind = item.WhichOneof("input")
        if kind is None:
            raise ValueError("each input needs text or token_ids")
        return self.frontend.embedding_input(item.text if kind == "text" else None,
                                             list(item.token_ids.ids) if kind == "token_ids" else None)

    async def Abort(self, request: common_pb2.AbortRequest, context):
        task = self._active.get(request.request_id)
        if task is not None:
            task.cancel()
        return common_pb2.AbortReply(found=task is not None)


def _chat_format(chat: router_pb2.ChatMessages) -> ChatFormat:
    """ValueError (-> INVALID_ARGUMENT) for template variables that are not a JSON object or are reserved."""
    try:
        kwargs = json.loads(chat.template_kwargs_json) if chat.template_kwargs_json else {}
    except ValueError:
        kwargs = None
    if not isinstance(kwargs, dict):
        raise ValueError("template_kwargs_json must be a JSON object")
    return ChatFormat(not chat.continue_final_message, chat.continue_final_message, kwargs)


def _chunk(piece: Piece) -> router_pb2.GenerateResponse:
    return router_pb2.GenerateResponse(chunk=router_pb2.GenerateChunk(
        token_ids=piece.token_ids, text=piece.text, logprobs=[logprob_to_proto(lp) for lp in piece.logprobs],
        prompt_logprobs=prompt_logprobs_to_proto(piece.prompt_logprobs)))


def _final(job: Job, finish: Finish) -> router_pb2.GenerateResponse:
    done = finish.done
    usage = common_pb2.Usage(prompt_tokens=len(job.prompt_token_ids), completion_tokens=finish.num_completion_tokens,
                             cached_tokens=done.num_cached_tokens)
    timings = common_pb2.Timings(prefill_s=done.prefill_s, transfer_s=done.transfer_s, ttft_s=finish.ttft_s,
                                 e2e_s=finish.e2e_s)
    return router_pb2.GenerateResponse(final=router_pb2.GenerateFinal(
        finish_reason=finish.reason, usage=usage, timings=timings, request_id=job.request_id,
        prefill_node=done.route.prefill.address, decode_node=done.route.decode.address))
