"""DecodeWorker: a request's life on a decode node.

1. `reserve()`: blocks for the prompt's KV are taken from the pool (None -> the router gets
   RESOURCE_EXHAUSTED and tries elsewhere) and the receiver is told to expect the transfer,
   writing each arriving layer straight into those blocks. Where the router sends the prompt, its
   leading blocks that the prefix cache holds (an earlier turn of the conversation) are reused
   and only the rest is transferred. A reservation that sees no
   `decode()` in time expires and frees its blocks.
2. `decode()`: waits until the receiver reports the transfer DONE (FAILED or a timeout
   frees the blocks and raises), then admits the request into the continuous batch after its
   first token (sampled on the prefill node) and streams the tokens that follow. With a prefix
   store, the blocks its output filled are stored once it finished (a conversation's next turn
   sends the answer back inside its prompt, to a prefill node that reads them).
3. Abort, or the client going away, frees everything at whatever stage the request is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from typing import AsyncIterator, Callable

from splitserve.engine import Engine, RequestOutput, SamplingParams
from splitserve.kvtransfer import KVReceiver, RecvState, TransferError, TransferMeta, scatter_checksummed, scatter_layer
from splitserve.node_api import KVTarget, Reservation
from splitserve.prefixstore.node_path import PrefixStore, storing_outputs
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.output_stream import run_streaming
from splitserve.runtime.reporting import TransferMetrics

REAP_INTERVAL_S = 0.1


class DecodeWorker:
    def __init__(self, engine_loop: EngineLoop, receiver: KVReceiver, target: KVTarget,
                 metrics: TransferMetrics | None = None, transfer_timeout_s: float = 30.0, checksum: bool = True,
                 prefix_store: PrefixStore | None = None):
        self.engine_loop = engine_loop
        self.prefix_store = prefix_store
        self.engine: Engine = engine_loop.engine
        self.receiver = receiver
        self.target = target  # this node, as prefill nodes reach it
        self.metrics = metrics
        self.transfer_timeout_s = transfer_timeout_s
        self.checksum = checksum
        self.expiry: dict[str, asyncio.TimerHandle] = {}
        self.sent_tokens: dict[str, int] = {}  # reservation -> the prompt tokens whose KV it receives

    async def reserve(self, rid: str, num_tokens: int, prompt: list[int] | None = None,
                      cache_salt: str | None = None, lora: str | None = None) -> Reservation | None:
        """Blocks for the prompt's KV; given the prompt, those of its leading blocks the prefix cache holds (under
        its cache salt and LoRA adapter) are reused and the transfer carries only the rest
        (Reservation.num_cached_tokens)."""
        if num_tokens < 1:
            raise ValueError("num_prompt_tokens must be >= 1")
        self._meta(rid, num_tokens)  # ValueError (a bad request id) before any block is taken
        block_ids, cached = await self._on_engine(lambda engine: (
            engine.reserve(rid, num_tokens, prompt, cache_salt, lora), engine.reserved_cached_tokens(rid)))
        if block_ids is None:
            return None
        meta = self._meta(rid, num_tokens - cached)
        self.sent_tokens[rid] = num_tokens - cached
        slots = self.engine.kv_slots(block_ids, num_tokens, start=cached)
        cache = self.engine.cache

        def write_layer(layer: int, kv) -> None:  # on the receiver's thread
            scatter_layer(kv, *cache.flat(layer), slots)  # the gRPC receiver's buffer is on the host, the pool may be on a GPU

        def write_hashed(layer: int, kv, seed: int) -> int | None:  # hashed as it is copied into a CPU pool
            value = scatter_checksummed(kv, *cache.flat(layer), slots, seed)
            if value is None:
                write_layer(layer, kv)
            return value

        self.receiver.expect(meta, write_layer, write_hashed)
        loop = asyncio.get_running_loop()
        self.expiry[rid] = loop.call_later(2 * self.transfer_timeout_s, lambda: loop.create_task(self._expire(rid)))
        return Reservation(self.target, len(block_ids), cached)

    async def decode(self, rid: str, prompt: list[int], first_token: int, params: SamplingParams,
                     prior: int) -> AsyncIterator[RequestOutput]:
        if rid not in self.expiry:
            raise ValueError(f"no reservation for request {rid!r} (expired, aborted or never made)")
        self.expiry.pop(rid).cancel()
        waited = time.monotonic()
        try:
            await self._await_kv(rid)
        except BaseException:
            await self._drop(rid)
            raise
        if self.metrics is not None:
            self.metrics.kv_received(self._meta(rid, self.sent_tokens.pop(rid, 0)).total_nbytes,
                                     time.monotonic() - waited)
        admit = lambda engine: engine.admit_prefilled(rid, prompt, first_token, params, prior)
        outputs = run_streaming(self.engine_loop, rid, admit)  # from the token after first_token on
        async for out in storing_outputs(self.prefix_store, prompt, params, outputs, sent=(first_token,)):
            yield out

    async def _await_kv(self, rid: str) -> None:
        """Until the receiver ends the transfer (woken by it, no polling), at most transfer_timeout_s."""
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def on_end(state: RecvState) -> None:  # on a receiver thread, or here at once
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(state))

        try:
            self.receiver.when_ended(rid, on_end)
        except KeyError:  # forgotten by the receiver: _poll says FAILED below
            ended.set_result(RecvState.FAILED)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ended, self.transfer_timeout_s)
        state = self._poll(rid)  # applies the receiver's own timeout too
        if state == RecvState.FAILED:
            raise TransferError(f"receive of request {rid} failed: {self._reason(rid)}")
        if state != RecvState.DONE:
            raise TransferError(f"KV of request {rid} did not arrive within {self.transfer_timeout_s}s")

    async def reap_forever(self) -> None:
        """Frees reservations whose transfer failed (a dead prefill peer) without waiting for Decode."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            for rid in [r for r in self.expiry if self._poll(r) == RecvState.FAILED]:
                await self.abort(rid)

    async def _expire(self, rid: str) -> None:
        if self.expiry.pop(rid, None) is not None:
            await self._drop(rid)

    async def _drop(self, rid: str) -> None:
        self.sent_tokens.pop(rid, None)
        self.receiver.abort(rid)
        await self._on_engine(lambda engine: engine.cancel_reservation(rid))

    async def abort(self, rid: str) -> bool:
        handle = self.expiry.pop(rid, None)
        if handle is None:
            return False
        handle.cancel()
        await self._drop(rid)
        return True

    def _poll(self, rid: str) -> RecvState:
        try:
            return self.receiver.poll(rid)
        except KeyError:  # forgotten by the receiver: treat as failed
            return RecvState.FAILED

    def _reason(self, rid: str) -> str:
        try:
            return self.receiver.info(rid).reason
        except KeyError:
            return "forgotten by the receiver"

    def _meta(self, rid: str, num_tokens: int) -> TransferMeta:
        cfg, dtype = self.engine.model_config, self.engine.config.kv_dtype
        return TransferMeta(rid, cfg.num_layers, num_tokens, cfg.num_kv_heads, cfg.head_dim, dtype, self.checksum)

    async def _on_engine(self, fn: Callable):
        return await asyncio.wrap_future(self.engine_loop.call(fn))
