"""Pieces every node servicer shares (node/servicer.py, prefill_node/servicer.py, decode_node/servicer.py):
request ids, chunk spans and token chunks converted, and the workers' failures mapped to status codes.

Failures are status codes: INVALID_ARGUMENT for bad input (ValueError), UNAVAILABLE when a KV
transfer fails, INTERNAL when the engine failed a step that held the request.
"""

from __future__ import annotations

import contextlib

import grpc

from splitserve.api.v1 import node_pb2
from splitserve.engine import RequestOutput
from splitserve.engine.errors import UnknownAdapter
from splitserve.kvtransfer import TransferError
from splitserve.kvtransfer.base import MAX_REQUEST_ID_CHARS
from splitserve.rpc.logprobs import logprob_to_proto, prompt_logprobs_to_proto
from splitserve.runtime.output_stream import EngineError


@contextlib.asynccontextmanager
async def status_codes(context: grpc.aio.ServicerContext):
    """Maps the workers' failures to status codes: bad input (NOT_FOUND for a LoRA adapter this node does not serve),
    failed transfer, failed engine step."""
    try:
        yield
    except UnknownAdapter as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except TransferError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"KV transfer failed: {exc}")
    except EngineError as exc:
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))


def request_id_of(request) -> str:
    """The request's id; ValueError (-> INVALID_ARGUMENT) unless it has 1 to MAX_REQUEST_ID_CHARS characters
    (an empty id would be renamed by the engine and its outputs never reach the caller)."""
    rid = request.request_id
    if not 0 < len(rid) <= MAX_REQUEST_ID_CHARS:
        raise ValueError(f"request_id must have 1 to {MAX_REQUEST_ID_CHARS} characters, got {len(rid)}")
    return rid


def spans_of(chunks) -> list[tuple[int, int]]:
    """Repeated ChunkSpan -> [(start, length)]."""
    return [(c.start, c.length) for c in chunks]


def token_chunk(out: RequestOutput) -> node_pb2.TokenChunk:
    return node_pb2.TokenChunk(token_ids=out.new_token_ids, logprobs=[logprob_to_proto(lp) for lp in out.new_logprobs],
                               finished=out.finished, finish_reason=out.finish_reason or "",
                               num_cached_tokens=out.num_cached_tokens,
                               prompt_logprobs=prompt_logprobs_to_proto(out.prompt_logprobs))


async def refuse(context: grpc.aio.ServicerContext, message: str) -> None:
    """FAILED_PRECONDITION: a call this node's role does not take."""
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
