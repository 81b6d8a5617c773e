"""`TorchReceiver`: the decode side of the torch.distributed backend.

It hosts the rendezvous `TCPStore` on the kv port. An acceptor thread pops join messages
(see `torch_pair`) and starts one thread per pair; a newer group from the same sender
instance replaces (breaks) the older one. A pair thread loops: receive a header (waiting up
to `idle_timeout_s`), `_admit` it against the reservations, post the payload's recv into one
of the pair's two reused buffers (or drain it into a chunk-sized scratch buffer when it
matches no live reservation), and only then `_deliver` the layer received before, so the
copy into the pool overlaps the next layer's receive (gloo's own thread fills the buffer).
A request's last layer is delivered at once, without waiting for another header. One
thread per pair: every extra hand-off costs a wake-up per layer. A peer that dies, a wait that times out or a header that
is not ours ends the pair thread and closes the group; the peer forms a new one next time.
A header claiming more than `max_layer_bytes` closes the group instead of being drained.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass

import torch
from torch.distributed import TCPStore

from splitserve.kvtransfer.base import TransferConfig
from splitserve.kvtransfer.receiver_base import Reservation, TrackedReceiver
from splitserve.kvtransfer.torch_pair import (
    JOIN_QUEUE,
    RECEIVER_RANK,
    STOP_TOKEN,
    PairLink,
    backend_for,
    make_group,
    parse_join,
    td,
)
from splitserve.kvtransfer.wire import Kind, LayerHeader

log = logging.getLogger(__name__)


class TorchReceiver(TrackedReceiver):
    def __init__(self, config: TransferConfig = TransferConfig(), host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(config)
        self._store = TCPStore(host, port, None, True, td(config.connect_timeout_s), wait_for_workers=False)
        self._host = host
        self._pop_store = TCPStore(host, self._store.port, None, False, td(config.idle_timeout_s))
        self._lock = threading.Lock()
        self._links: dict[str, PairLink] = {}  # sender instance -> its current pair
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept, "kv-accept")

    @property
    def address(self) -> str:
        return f"{self._host}:{self._store.port}"

    @property
    def port(self) -> int:
        return self._store.port

    @property
    def num_pairs(self) -> int:
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            links = list(self._links.values())
        self._fail_all("receiver closed")
        self._store.queue_push(JOIN_QUEUE, STOP_TOKEN)
        for link in links:
            link.close()
        for thread in self._threads:
            thread.join(1.0)

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                message = self._pop_store.queue_pop(JOIN_QUEUE).decode(errors="replace")
            except Exception:  # idle_timeout_s without joins, or the store is going away
                time.sleep(0.1)
                continue
            parsed = parse_join(message)
            if parsed is None or parsed[2] != backend_for(self.config.device):
                if message != STOP_TOKEN:
                    log.warning("ignoring KV join message %r", message[:120])
                continue
            self._spawn(self._serve_pair, f"kv-recv-{parsed[1][:8]}", parsed[0], parsed[1])

    def _serve_pair(self, pair_key: str, instance: str) -> None:
        if self._closed:
            return
        try:
            group = make_group(self._store, pair_key, RECEIVER_RANK, self.config.device, self.config.connect_timeout_s,
                               self.config.idle_timeout_s)
        except Exception as exc:
            log.warning("KV pair %s did not form: %s", pair_key, exc)
            return
        link = PairLink(group, RECEIVER_RANK, self.config.device)
        with self._lock:
            old, self._links[instance] = self._links.get(instance), link
        if old is not None:
            old.close()
        try:
            self._receive_loop(link)
        except Exception as exc:
            log.info("KV pair %s closed: %s", pair_key, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        finally:
            link.close()
            with self._lock:
                if self._links.get(instance) is link:
                    del self._links[instance]

    def _receive_loop(self, link: PairLink) -> None:
        buffers = [torch.empty(0, dtype=torch.uint8, device=self.config.device) for _ in range(2)]
        pending: _Received | None = None  # received, not yet written
        try:
            for count in itertools.count():
                if pending is not None and pending.is_last:
                    pending = self._flush(pending)
                header = link.recv_header(self.config.idle_timeout_s)
                if header.kind is Kind.ABORT:
                    self._sender_aborted(header.request_hash)
                    continue
                res = self._admit(header)
                if res is None:
                    pending = self._flush(pending)
                    if header.nbytes > self.config.max_layer_bytes:
                        raise ValueError(f"header claims {header.nbytes} bytes, above max_layer_bytes")
                    link.drain(header.nbytes, self.config.timeout_s)
                    continue
                if buffers[count % 2].numel() < header.nbytes:
                    buffers[count % 2] = torch.empty(header.nbytes, dtype=torch.uint8, device=self.config.device)
                flat = buffers[count % 2][: header.nbytes]
                works = link.post_payload(flat)
                pending = self._flush(pending)  # overlaps with this layer's receive
                try:
                    link.wait_all(works, res.deadline - time.monotonic())
                except Exception:
                    self._unadmit(res, header)
                    raise
                pending = _Received(res, header, flat)
        finally:
            self._flush(pending)

    def _flush(self, received: _Received | None) -> None:
        """Deliver a received layer (if any); returns None, the new `pending`."""
        if received is not None:
            # kv: [2, num_tokens, num_kv_heads, head_dim] over the receive buffer
            kv = received.flat.view(received.res.meta.torch_dtype).view(received.res.meta.layer_shape)
            self._deliver(received.res, received.header, kv)
        return None


@dataclass(frozen=True)
class _Received:
    res: Reservation
    header: LayerHeader
    flat: torch.Tensor  # uint8 [nbytes], one of the pair's two receive buffers

    @property
    def is_last(self) -> bool:
        return self.header.layer == self.res.meta.num_layers - 1
