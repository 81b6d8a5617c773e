"""PrefillWorker: a request's life on a prefill node.

1. `prefill()` opens a transfer to the decode node named in the request (its sender forms the
   pair's process group on first use) and admits the prompt as a prefill-only request that
   keeps its KV blocks when it finishes. A request whose documents hit the chunk cache takes
   the blended path instead (prefill_node/blended.py).
   With a prefix store (splitserve/prefixstore), the prompt blocks it holds and this node lacks are read into
   the pool first; the blocks it lacks are stored after the prefill.
2. The engine batches the chunked prefills of concurrent requests. In the step that computes
   a request's last chunk, after each layer, that layer's KV for the whole prompt (but the
   leading tokens the decode node holds already: `target_cached`) is copied out and queued on
   the sender (prefill_node/transfers.py, the engine loop's step hooks).
   Prompts shorter than `one_shot_max_tokens` send all layers after the step instead.
3. The step samples the first token; the transfer is finished and awaited, then the blocks
   are released and the first token goes back to the router. A failed or timed-out send, or a
   first token that already ends the request, aborts the transfer; the blocks are released
   either way.
"""

from __future__ import annotations

import asyncio
import time

from splitserve.engine import Engine, RequestOutput, SamplingParams
from splitserve.node_api import KVTarget, PrefillResult
from splitserve.prefixstore.node_path import PrefixStore, shared_admission
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.output_stream import run_streaming
from splitserve.runtime.reporting import TransferMetrics
from prefill_node.blended import BlendedPrefill
from prefill_node.chunks import ChunkPath, can_blend
from prefill_node.senders import SenderPool
from prefill_node.transfers import Transfers


class PrefillWorker:
    def __init__(self, engine_loop: EngineLoop, transfers: Transfers, senders: SenderPool,
                 chunk_path: ChunkPath | None = None, metrics: TransferMetrics | None = None,
                 one_shot_max_tokens: int = 256, transfer_timeout_s: float = 30.0,
                 prefix_store: PrefixStore | None = None):
        self.engine_loop = engine_loop
        self.engine: Engine = engine_loop.engine
        self.transfers = transfers
        self.senders = senders
        self.chunk_path = chunk_path
        self.blended = BlendedPrefill(engine_loop, transfers, chunk_path, transfer_timeout_s) if chunk_path else None
        self.metrics = metrics
        self.one_shot_max_tokens = one_shot_max_tokens
        self.transfer_timeout_s = transfer_timeout_s
        self.prefix_store = prefix_store

    async def prefill(self, rid: str, prompt: list[int], params: SamplingParams, target: KVTarget,
                      num_prior_output_tokens: int, chunks: list[tuple[int, int]] = (),
                      target_cached: int = 0) -> PrefillResult:
        """`target_cached`: leading prompt tokens whose KV the decode node holds already (not sent)."""
        start = time.monotonic()
        self.engine.validate(prompt, params, rid, num_prior_output_tokens)
        kv_dtype = self.engine.config.kv_dtype
        if target.kv_dtype and target.kv_dtype != kv_dtype:
            raise ValueError(f"the decode node {target.node_id} keeps its KV cache in {target.kv_dtype}, this prefill "
                             f"node in {kv_dtype}: give every node the same --dtype and --kv-cache-dtype")
        if not 0 <= target_cached < len(prompt) or (target_cached and chunks):
            raise ValueError(f"num_target_cached_tokens must be below the prompt's {len(prompt)} tokens, and 0 for a "
                             f"prompt with documents; got {target_cached}")
        blend = chunks and self.chunk_path and can_blend(params)
        plan = await self.chunk_path.plan(prompt, list(chunks), rid, params.cache_salt) if blend else None
        try:
            return await self._prefill(rid, prompt, params, target, num_prior_output_tokens, plan, start,
                                       target_cached)
        finally:
            if self.chunk_path is not None:
                self.chunk_path.prefilled(rid)  # live variants it scheduled may be recorded now

    async def _prefill(self, rid: str, prompt: list[int], params: SamplingParams, target: KVTarget,
                       num_prior_output_tokens: int, plan, start: float, target_cached: int) -> PrefillResult:
        sender = await asyncio.to_thread(self.senders.get, target)
        if plan is not None:
            start = time.monotonic()
            blended = await self.blended.run(rid, prompt, params, sender, num_prior_output_tokens, plan)
            return self._result(blended.output, start, blended.computed_at, blended.sent_bytes,
                                plan.num_reused_tokens, blended.computed_rows)
        try:
            layerwise = len(prompt) > self.one_shot_max_tokens
            with self.transfers.opened(rid, sender, len(prompt), layerwise, target_cached) as transfer:
                out = await self._run(rid, prompt, params, num_prior_output_tokens)
                computed = time.monotonic()
                self.transfers.raise_if_dropped(rid)
                if out.finish_reason == "prefilled":
                    await self.transfers.wait(rid, self.transfer_timeout_s)
                return self._result(out, start, computed, transfer.sent_bytes)
        finally:
            self.engine_loop.call(lambda engine: engine.release(rid))

    async def _run(self, rid: str, prompt: list[int], params: SamplingParams, prior: int) -> RequestOutput:
        admit = lambda engine: engine.add_request(prompt, params, rid, prefill_only=True, keep_blocks=True,
                                                  num_prior_output_tokens=prior)
        admission = await shared_admission(self.prefix_store, prompt, params, admit)
        outputs = [out async for out in run_streaming(self.engine_loop, rid, admission.admit)]
        admission.prefilled()  # the blocks are kept until the caller releases them
        return _merge(outputs)

    def _result(self, out: RequestOutput, start: float, computed: float, kv_bytes: int, num_reused_tokens: int = 0,
                num_computed_tokens: float = 0.0) -> PrefillResult:
        transfer_s = time.monotonic() - computed
        if self.metrics is not None and kv_bytes:
            self.metrics.kv_sent(kv_bytes, transfer_s)
        return PrefillResult(out.new_token_ids[0], out.new_logprobs[0] if out.new_logprobs else None,
                             out.finish_reason != "prefilled", out.finish_reason, out.num_cached_tokens, kv_bytes,
                             computed - start, transfer_s, num_reused_tokens, num_computed_tokens, out.prompt_logprobs)

    async def abort(self, rid: str) -> bool:
        return self.transfers.abort(rid)


def _merge(outputs: list[RequestOutput]) -> RequestOutput:
    last = outputs[-1]
    last.new_token_ids = [t for o in outputs for t in o.new_token_ids]
    last.new_logprobs = [lp for o in outputs for lp in o.new_logprobs]
    last.prompt_logprobs = next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None)
    return last
