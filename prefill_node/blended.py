"""A blended prefill on a prefill node (requests with chunk-cache hits).

Like PrefillWorker.prefill, but the engine's chunked prefill is replaced by one call on the
engine thread: reserve blocks -> blended prefill, each layer's K/V written into the blocks and
queued on the sender as soon as it is done -> first token sampled. Then the transfer is
finished and awaited (or aborted when the first token already ends the request), and the
blocks are given back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from splitserve.chunkcache.runner import RequestPlan
from splitserve.engine import RequestOutput, SamplingParams
from splitserve.kvtransfer import KVSender, TransferError
from splitserve.runtime.engine_loop import EngineLoop
from prefill_node.chunks import ChunkPath
from prefill_node.transfers import Transfers


@dataclass(frozen=True)
class BlendedOutput:
    output: RequestOutput  # the first token, finish_reason "prefilled" unless it ended the request
    computed_at: float  # time.monotonic() when the prompt was computed
    computed_rows: float
    sent_bytes: int


class BlendedPrefill:
    def __init__(self, engine_loop: EngineLoop, transfers: Transfers, chunk_path: ChunkPath, transfer_timeout_s: float):
        self.engine_loop = engine_loop
        self.transfers = transfers
        self.chunk_path = chunk_path
        self.transfer_timeout_s = transfer_timeout_s

    async def run(self, rid: str, prompt: list[int], params: SamplingParams, sender: KVSender, prior: int,
                  plan: RequestPlan) -> BlendedOutput:
        try:
            with self.transfers.opened(rid, sender, len(prompt), layerwise=True):
                return await self._blend_and_send(rid, prompt, params, sender, prior, plan)
        finally:
            self.engine_loop.call(lambda engine: engine.cancel_reservation(rid))

    async def _blend_and_send(self, rid: str, prompt: list[int], params: SamplingParams, sender: KVSender, prior: int,
                              plan: RequestPlan) -> BlendedOutput:
        send = lambda layer, slots: self.transfers.send(rid, layer, slots)
        blend = lambda engine: self.chunk_path.cache.blend(engine, rid, prompt, plan, params, prior, on_layer=send)
        outcome = await asyncio.wrap_future(self.engine_loop.call(blend))
        if outcome is None:
            raise TransferError(f"no free KV blocks for the blended prefill of {len(prompt)} tokens, or its chunk KV "
                                "failed while loading from Redis (deleted; a miss next time)")
        computed = time.monotonic()
        self.transfers.raise_if_dropped(rid)
        if outcome.finish_reason is None:
            sender.finish(rid)
            await self.transfers.wait(rid, self.transfer_timeout_s)
        else:
            sender.abort(rid)
        s = outcome.sample
        out = RequestOutput(rid, [s.token_id], "", outcome.finish_reason is not None,
                            outcome.finish_reason or "prefilled",
                            [(s.logprob, s.top_logprobs)] if s.logprob is not None else [], len(prompt), prior + 1,
                            len(prompt) - round(outcome.computed_rows))
        return BlendedOutput(out, computed, outcome.computed_rows, self.transfers.active[rid].sent_bytes)
