"""PrefillWorker: a request's life on a prefill node.

1. `prefill()` opens a transfer to the decode node named in the request (its sender forms the
   pair's process group on first use) and admits the prompt as a prefill-only request that
   keeps its KV blocks when it finishes.
2. The engine batches the chunked prefills of concurrent requests. In the step that computes
   a request's last chunk, after each layer, that layer's KV for the whole prompt is copied
   out and queued on the sender (layer-wise: the send of layer l overlaps layer l+1). Prompts
   shorter than `one_shot_max_tokens` send all layers after the step instead.
3. The step samples the first token; the transfer is finished and awaited, then the blocks
   are released and the first token goes back to the router. A failed or timed-out send, or a
   first token that already ends the request, aborts the transfer; the blocks are released
   either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from splitserve.api.v1 import common_pb2, node_pb2
from splitserve.engine import Engine, RequestOutput, SamplingParams
from splitserve.kvtransfer import SendState, TransferError, TransferMeta
from splitserve.rpc.convert import logprob_to_proto
from splitserve.runtime.output_stream import run_streaming
from prefill_node.blended import prefill_blended

log = logging.getLogger(__name__)


@dataclass
class _Transfer:
    sender: object
    meta: TransferMeta
    layerwise: bool
    sent_bytes: int = 0
    dropped_after: int | None = None  # fault injection: layers sent before the transfer was dropped


class PrefillWorker:
    def __init__(self, engine_loop, node_id: str, senders, one_shot_max_tokens: int = 256,
                 transfer_timeout_s: float = 30.0, checksum: bool = False, fault_send_delay_s: float = 0.0):
        self.engine_loop = engine_loop
        self.engine: Engine = engine_loop.engine
        self.node_id = node_id
        self.senders = senders  # SenderPool: one sender per decode node
        self.one_shot_max_tokens = one_shot_max_tokens
        self.transfer_timeout_s = transfer_timeout_s
        self.checksum = checksum
        self.fault_send_delay_s = fault_send_delay_s
        self.transfers: dict[str, _Transfer] = {}
        self.drops_armed = 0  # fault injection (--fault-signals): transfers to drop, one per SIGUSR1
        self.metrics = None  # node.metrics.NodeMetrics: transfer bytes and seconds
        self.chunk_path = None  # node.chunks.ChunkPath when the node has a chunk cache

    # --- on the engine thread ------------------------------------------------------------------

    def make_layer_hook(self, plan):
        finishing = [c.request for c in plan.chunks
                     if c.samples and c.request.request_id in self.transfers and self.transfers[c.request.request_id].layerwise]
        if not finishing:
            return None
        slots = {r.request_id: self.engine.kv_slots(r.block_ids, r.num_prompt_tokens) for r in finishing}

        def send_layer(layer: int) -> None:
            for rid, request_slots in slots.items():
                self._send(rid, layer, request_slots)
        return send_layer

    def after_step(self, engine: Engine, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            transfer = self.transfers.get(out.request_id)
            if transfer is None or not out.finished:
                continue
            if out.finish_reason != "prefilled":
                transfer.sender.abort(out.request_id)
                continue
            if not transfer.layerwise:
                held = engine.held_request(out.request_id)
                request_slots = engine.kv_slots(held.block_ids, held.num_prompt_tokens)
                for layer in range(engine.model_config.num_layers):
                    self._send(out.request_id, layer, request_slots)
            if transfer.dropped_after is None:
                transfer.sender.finish(out.request_id)

    def _send(self, rid: str, layer: int, request_slots) -> None:
        if self.fault_send_delay_s:
            time.sleep(self.fault_send_delay_s)
        transfer = self.transfers[rid]
        if transfer.dropped_after is not None or self._drop_here(rid, layer):
            return
        kv = self.engine.cache.read(layer, request_slots)  # a copy: [2, n, kv_heads, head_dim]
        transfer.sent_bytes += kv.numel() * kv.element_size()
        transfer.sender.send_layer(rid, layer, kv)

    def arm_drop(self) -> None:
        """--fault-signals: SIGUSR1 lands here (the asyncio loop); one more transfer is dropped."""
        self.drops_armed += 1
        log.warning("fault injection: the next KV transfer will be dropped midway")

    def _drop_here(self, rid: str, layer: int) -> bool:
        """Fault injection: drop an armed transfer at its middle layer - the rest is never sent,
        the peer is not told (as when a connection dies), the Prefill call fails."""
        if self.drops_armed < 1 or layer != self.engine.model_config.num_layers // 2:
            return False
        self.drops_armed -= 1
        self.transfers[rid].dropped_after = layer
        self.transfers[rid].sender.abandon(rid, f"dropped after {layer} layers (fault injection)")
        log.warning("fault injection: dropped the KV transfer of %s after %d of %d layers", rid, layer,
                    self.engine.model_config.num_layers)
        return True

    # --- on the asyncio loop ---------------------------------------------------------------------

    async def prefill(self, rid: str, prompt: list[int], params: SamplingParams, target: node_pb2.KVTarget,
                      num_prior_output_tokens: int, chunks: list[tuple[int, int]] = ()) -> node_pb2.PrefillReply:
        start = time.monotonic()
        self.engine.validate(prompt, params, rid, num_prior_output_tokens)
        plan = await self.chunk_path.plan(prompt, list(chunks)) if chunks and self.chunk_path else None
        if plan is not None:
            return await prefill_blended(self, self.chunk_path, rid, prompt, params, target, num_prior_output_tokens, plan)
        meta = self._meta(rid, len(prompt))
        sender = await asyncio.to_thread(self.senders.get, target)
        sender.begin(meta)
        self.transfers[rid] = _Transfer(sender, meta, layerwise=len(prompt) > self.one_shot_max_tokens)
        try:
            out = await self._run(rid, prompt, params, num_prior_output_tokens)
            computed = time.monotonic()
            self._raise_if_dropped(rid)
            if out.finish_reason == "prefilled":
                await self._await_transfer(sender, rid)
            return self._reply(out, start, computed, self.transfers[rid].sent_bytes)
        except BaseException:
            sender.abort(rid)
            raise
        finally:
            self.transfers.pop(rid, None)
            self.engine_loop.call(lambda engine: engine.release(rid))

    async def _run(self, rid, prompt, params, prior) -> RequestOutput:
        admit = lambda engine: engine.add_request(prompt, params, rid, prefill_only=True, keep_blocks=True,
                                                  num_prior_output_tokens=prior)
        outputs = [out async for out in run_streaming(self.engine_loop, rid, admit)]
        return _merge(outputs)

    def _raise_if_dropped(self, rid: str) -> None:
        transfer = self.transfers[rid]
        if transfer.dropped_after is not None:
            raise TransferError(f"the KV transfer of {rid} was dropped after {transfer.dropped_after} layers")

    async def _await_transfer(self, sender, rid: str) -> None:
        state = await asyncio.to_thread(sender.wait, rid, self.transfer_timeout_s)
        if state != SendState.DONE:
            raise TransferError(f"send of request {rid} ended {state.name}")

    def _meta(self, rid: str, num_tokens: int) -> TransferMeta:
        cfg, dtype = self.engine.model_config, self.engine.config.dtype
        return TransferMeta(rid, cfg.num_layers, num_tokens, cfg.num_kv_heads, cfg.head_dim, dtype, self.checksum)

    def _reply(self, out: RequestOutput, start: float, computed: float, kv_bytes: int) -> node_pb2.PrefillReply:
        reply = node_pb2.PrefillReply(
            first_token_id=out.new_token_ids[0], finished=out.finish_reason != "prefilled",
            finish_reason=out.finish_reason, num_cached_tokens=out.num_cached_tokens, kv_bytes=kv_bytes,
            timings=common_pb2.Timings(prefill_s=computed - start, transfer_s=time.monotonic() - computed))
        if out.new_logprobs:
            reply.logprob.CopyFrom(logprob_to_proto(out.new_logprobs[0]))
        if self.metrics is not None and kv_bytes:
            self.metrics.kv_sent(kv_bytes, reply.timings.transfer_s)
        return reply

    async def abort(self, rid: str) -> bool:
        transfer = self.transfers.get(rid)
        if transfer is not None:
            transfer.sender.abort(rid)
        return transfer is not None


def _merge(outputs: list[RequestOutput]) -> RequestOutput:
    last = outputs[-1]
    last.new_token_ids = [t for o in outputs for t in o.new_token_ids]
    last.new_logprobs = [lp for o in outputs for lp in o.new_logprobs]
    return last
