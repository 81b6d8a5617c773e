"""A blended prefill on a prefill node (requests with chunk-cache hits).

Like PrefillWorker.prefill, but the engine's chunked prefill is replaced by one call on the
engine thread: reserve blocks -> blended prefill, each layer's K/V written into the blocks and
queued on the sender as soon as it is done -> first token sampled. Then the transfer is
finished and awaited (or aborted when the first token already ends the request), and the
blocks are given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from splitserve.engine import RequestOutput
from splitserve.kvtransfer import TransferError


async def prefill_blended(worker, chunk_path, rid: str, prompt: list[int], params, target, prior: int, plan):
    from prefill_node.worker import _Transfer

    start = time.monotonic()
    sender = await asyncio.to_thread(worker.senders.get, target)
    sender.begin(worker._meta(rid, len(prompt)))
    worker.transfers[rid] = _Transfer(sender, worker._meta(rid, len(prompt)), layerwise=True)
    try:
        with _abort_on_error(sender, rid):
            return await _blend_and_send(worker, chunk_path, sender, rid, prompt, params, prior, plan, start)
    finally:
        worker.transfers.pop(rid, None)
        worker.engine_loop.call(lambda engine: engine.cancel_reservation(rid))


async def _blend_and_send(worker, chunk_path, sender, rid, prompt, params, prior, plan, start):
    blend = lambda engine: chunk_path.cache.blend(engine, rid, prompt, plan, params, prior,
                                                   on_layer=lambda layer, slots: worker._send(rid, layer, slots))
    outcome = await asyncio.wrap_future(worker.engine_loop.call(blend))
    if outcome is None:
        raise TransferError(f"no free KV blocks for the blended prefill of {len(prompt)} tokens")
    computed = time.monotonic()
    worker._raise_if_dropped(rid)
    if outcome.finish_reason is None:
        sender.finish(rid)
        await worker._await_transfer(sender, rid)
    else:
        sender.abort(rid)
    s = outcome.sample
    out = RequestOutput(rid, [s.token_id], "", outcome.finish_reason is not None, outcome.finish_reason or "prefilled",
                        [(s.logprob, s.top_logprobs)] if s.logprob is not None else [], len(prompt), prior + 1,
                        len(prompt) - round(outcome.computed_rows))
    reply = worker._reply(out, start, computed, worker.transfers[rid].sent_bytes)
    reply.num_reused_tokens, reply.num_computed_tokens = plan.num_reused_tokens, outcome.computed_rows
    return reply


@contextlib.contextmanager
def _abort_on_error(sender, rid: str):
    try:
        yield
    except BaseException:
        sender.abort(rid)
        raise
