"""Transfers: the KV sends in flight on a prefill node, driven from the engine thread.

The engine loop calls it around each step (it is the loop's StepHooks): `make_layer_hook`
sends each layer of the requests whose last prompt chunk this step computes, right after the
layer is written (layer-wise: the send of layer l overlaps layer l+1); `after_step` sends all
layers of short prompts at once, finishes the transfer of every request the step prefilled and
aborts those that ended otherwise. The asyncio side opens and closes transfers and awaits them
(`opened`, `wait`). Fault injection (--fault-signals) drops an armed transfer midway.
Each layer is read out of the pool straight into the transfer's `joined_layers` buffers, where
consecutive layers lie back to back: the torch sender moves them a few at a time, one message each.
A checksummed layer in a CPU pool is hashed as it is read (`gather_checksummed`), so the sender
does not read it again to hash it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from splitserve.engine import Engine, RequestOutput
from splitserve.kvtransfer import (KVSender, SendState, TransferError, TransferMeta, checksum_seed, gather_checksummed,
                                   joined_layers)

log = logging.getLogger(__name__)


@dataclass
class Transfer:
    sender: KVSender
    meta: TransferMeta
    layerwise: bool
    sent_bytes: int = 0
    dropped_after: int | None = None  # fault injection: layers sent before the transfer was dropped
    layers: list[torch.Tensor] | None = None  # where its layers are read to: back to back, sent joined
    skip: int = 0  # leading prompt tokens the decode node holds already: not sent


class Transfers:
    def __init__(self, engine: Engine, checksum: bool = True, fault_send_delay_s: float = 0.0):
        self.engine = engine
        self.checksum = checksum
        self.fault_send_delay_s = fault_send_delay_s
        self.active: dict[str, Transfer] = {}
        self.drops_armed = 0  # fault injection (--fault-signals): transfers to drop, one per SIGUSR1

    # --- on the asyncio loop ---------------------------------------------------------------------

    def _open(self, rid: str, sender: KVSender, num_tokens: int, layerwise: bool, skip: int) -> Transfer:
        cfg = self.engine.model_config
        meta = TransferMeta(rid, cfg.num_layers, num_tokens - skip, cfg.num_kv_heads, cfg.head_dim,
                            self.engine.config.kv_dtype, self.checksum)
        sender.begin(meta)
        transfer = self.active[rid] = Transfer(sender, meta, layerwise, skip=skip)
        return transfer

    @contextlib.contextmanager
    def opened(self, rid: str, sender: KVSender, num_tokens: int, layerwise: bool, skip: int = 0):
        """A transfer of the KV of a prompt's tokens after the first `skip`, open for the block: aborted when the
        block fails, forgotten after it either way."""
        transfer = self._open(rid, sender, num_tokens, layerwise, skip)
        try:
            yield transfer
        except BaseException:
            sender.abort(rid)
            raise
        finally:
            self.active.pop(rid, None)

    async def wait(self, rid: str, timeout_s: float) -> None:
        """Until the decode node confirmed the whole KV; TransferError when it failed or timed out."""
        sender = self.active[rid].sender
        state = await asyncio.to_thread(sender.wait, rid, timeout_s)
        if state != SendState.DONE:
            reason = sender.info(rid).reason
            raise TransferError(f"send of request {rid} ended {state.name}" + (f": {reason}" if reason else ""))

    def raise_if_dropped(self, rid: str) -> None:
        transfer = self.active[rid]
        if transfer.dropped_after is not None:
            raise TransferError(f"the KV transfer of {rid} was dropped after {transfer.dropped_after} layers")

    def abort(self, rid: str) -> bool:
        transfer = self.active.get(rid)
        if transfer is not None:
            transfer.sender.abort(rid)
        return transfer is not None

    def arm_drop(self) -> None:
        """--fault-signals: SIGUSR1 lands here (the asyncio loop); one more transfer is dropped."""
        self.drops_armed += 1
        log.warning("fault injection: the next KV transfer will be dropped midway")

    # --- on the engine thread ------------------------------------------------------------------

    def make_layer_hook(self, plan) -> Callable[[int], None] | None:
        finishing = [c.request for c in plan.chunks if c.samples and self._layerwise(c.request.request_id)]
        if not finishing:
            return None
        slots = {r.request_id: self.engine.kv_slots(r.block_ids, r.num_prompt_tokens, self.active[r.request_id].skip)
                 for r in finishing}

        def send_layer(layer: int) -> None:
            for rid, request_slots in slots.items():
                self.send(rid, layer, request_slots)
        return send_layer

    def _layerwise(self, rid: str) -> bool:
        transfer = self.active.get(rid)
        return transfer is not None and transfer.layerwise

    def after_step(self, engine: Engine, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            transfer = self.active.get(out.request_id)
            if transfer is None or not out.finished:
                continue
            if out.finish_reason != "prefilled":
                transfer.sender.abort(out.request_id)
                continue
            if not transfer.layerwise:
                held = engine.held_request(out.request_id)
                request_slots = engine.kv_slots(held.block_ids, held.num_prompt_tokens, transfer.skip)
                for layer in range(engine.model_config.num_layers):
                    self.send(out.request_id, layer, request_slots)
            if transfer.dropped_after is None:
                transfer.sender.finish(out.request_id)

    def send(self, rid: str, layer: int, request_slots) -> None:
        """Copies one layer of the request's KV out of the pool and queues it on its sender."""
        if self.fault_send_delay_s:
            time.sleep(self.fault_send_delay_s)
        transfer = self.active[rid]
        if transfer.dropped_after is not None or self._drop_here(rid, layer):
            return
        kv, value = self._read(transfer, rid, layer, request_slots)
        transfer.sent_bytes += kv.numel() * kv.element_size()
        transfer.sender.send_layer(rid, layer, kv, checksum=value)

    def _read(self, transfer: Transfer, rid: str, layer: int, request_slots) -> tuple[torch.Tensor, int | None]:
        """The layer read into its joined buffer, with its checksum where the native kernels hash it
        as they copy (a CPU pool, a checksummed transfer); else the sender hashes it."""
        out = self._layer_buffer(transfer, layer)
        if transfer.meta.checksum and transfer.sender.device == "cpu":
            value = gather_checksummed(*self.engine.cache.flat(layer), request_slots, out, checksum_seed(rid, layer))
            if value is not None:
                return out, value
        kv = self.engine.cache.read(layer, request_slots, out=out)
        return kv.to(transfer.sender.device), None  # the gloo transport from a GPU: a host copy (else a no-op)

    def _layer_buffer(self, transfer: Transfer, layer: int) -> torch.Tensor:
        """Layer `layer`'s [2, n, kv_heads, head_dim] slot among the transfer's joined buffers
        (allocated at its first layer): consecutive layers lie back to back, so the sender moves
        several in one message."""
        if transfer.layers is None:
            transfer.layers = joined_layers(transfer.meta, self.engine.cache.k[0].device)
        return transfer.layers[layer]

    def _drop_here(self, rid: str, layer: int) -> bool:
        """Fault injection: drop an armed transfer at its middle layer - the rest is never sent,
        the peer is not told (as when a connection dies), the Prefill call fails."""
        if self.drops_armed < 1 or layer != self.engine.model_config.num_layers // 2:
            return False
        self.drops_armed -= 1
        self.active[rid].dropped_after = layer
        self.active[rid].sender.abandon(rid, f"dropped after {layer} layers (fault injection)")
        log.warning("fault injection: dropped the KV transfer of %s after %d of %d layers", rid, layer,
                    self.engine.model_config.num_layers)
        return True
