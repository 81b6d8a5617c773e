"""`TorchReceiver`: the decode side of the torch.distributed backend.

It hosts the rendezvous `TCPStore` on the kv port. An acceptor thread pops join messages
(see `torch_pair`) and starts one thread per pair; a newer group from the same sender
instance replaces (breaks) the older one. A pair thread loops: receive a header message
(waiting up to `idle_timeout_s`), `_admit` each of its LAYER entries against the
reservations and post every payload's recv at once, into buffers reused from the pair's pool
(fresh memory costs a page fault per 4 KiB), or into a chunk-sized scratch buffer for a
payload that matches no live reservation; CHECKSUM and ABORT entries go to the reservations
they name. A header with LAYER entries is acked once their recvs are posted: only then does
the sender post the payloads (see `PairLink`). Headers that have already arrived are taken
too (gloo), before and while it waits for the payloads (once at most POST_AHEAD are
outstanding), so the sender's next flight flows right behind this one. A LAYER entry and the
JOINED entries after it are one message: one recv into one pooled buffer, each layer delivered
from its slice. The payloads are waited for in order, `_deliver`ing each (hash, then copy into the pool) while gloo's own
thread fills the next. The last layer of a flight waits for the next header's recvs to be
posted before it is delivered, unless it is its request's last layer. One thread per pair:
every extra hand-off costs a wake-up per layer. A peer that dies, a wait that times out or a
header that is not ours ends the pair thread and closes the group; the peer forms a new one
next time. A header claiming more than `max_layer_bytes` closes the group instead of being
drained.
"""

from __future__ import annotations

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
from splitserve.runtime.torch_threads import serially
from splitserve.kvtransfer.wire import MAX_FLIGHT_LAYERS, Kind, LayerHeader

log = logging.getLogger(__name__)
POST_AHEAD = 2  # the next flight's recvs are posted once this few payloads are outstanding


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
        thread = threading.Thread(target=serially(target), args=args, name=name, daemon=True)
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
        pool = _BufferPool(self.config.device)
        pending: _Received | None = None  # received, not yet delivered
        try:
            while True:
                if pending is not None and pending.is_last:
                    pending = self._flush(pending, pool)
                payloads = self._post_all(link, link.recv_header(self.config.idle_timeout_s), pool)
                self._post_arrived(link, payloads, pool, 0)
                pending = self._flush(pending, pool)  # overlaps with these payloads
                i = 0
                while i < len(payloads):
                    post = payloads[i]
                    self._wait(link, post, payloads[i + 1:])
                    if post.res is not None:
                        pending = _Received(post.res, post.header, post.flat, post.release)
                    elif post.release is not None:  # a joined message's last layer, dropped:
                        pool.give(post.release)  # the layers before it are delivered already
                    self._post_arrived(link, payloads, pool, i + 1)  # the next flight flows right behind this one
                    if pending is not None and i + 1 < len(payloads):
                        pending = self._flush(pending, pool)  # while gloo fills the next one
                    i += 1
        finally:
            self._flush(pending, pool)

    def _post_arrived(self, link: PairLink, payloads: list[_Posted], pool: _BufferPool, num_waited: int) -> None:
        """Post (and ack) the headers already here while at most POST_AHEAD payloads are outstanding."""
        try:
            while link.header_arrived() and len(payloads) - num_waited <= POST_AHEAD:
                payloads += self._post_all(link, link.recv_header(self.config.idle_timeout_s), pool)
        except Exception:
            self._unadmit_all(payloads[num_waited:])
            raise

    def _post_all(self, link: PairLink, entries: list[LayerHeader], pool: _BufferPool) -> list[_Posted]:
        """Post the recvs of a header's payloads and ack them; its CHECKSUM entries are recorded
        after the ack, so the sender's payloads do not wait for them."""
        posted: list[_Posted] = []
        try:
            for message in _messages([entry for entry in entries if entry.kind is not Kind.CHECKSUM]):
                if len(message) > 1:
                    posted += self._post_joined(link, message, pool)
                    continue
                post = self._post(link, message[0], pool)
                posted += [post] if post is not None else []
        except Exception:
            self._unadmit_all(posted)
            raise
        if posted:
            link.ack()  # the sender posts these payloads now: each finds its recv waiting
        for entry in entries:
            if entry.kind is Kind.CHECKSUM:
                self._checksum_entry(entry)
        return posted

    def _post(self, link: PairLink, entry: LayerHeader, pool: _BufferPool) -> _Posted | None:
        """Act on one header entry; for a LAYER entry, post its payload's recv (None otherwise)."""
        if entry.kind is Kind.ABORT:
            self._sender_aborted(entry.request_hash)
            return None
        if entry.kind is Kind.JOINED:
            raise ValueError("KV header: a JOINED entry follows no layer")
        res = self._admit_sized(entry)
        if res is None:
            return _Posted(None, entry, None, link.post_drain(entry.nbytes))
        flat = pool.take(entry.nbytes)
        return _Posted(res, entry, flat, link.post_payload(flat), release=flat)

    def _post_joined(self, link: PairLink, message: list[LayerHeader], pool: _BufferPool) -> list[_Posted]:
        """Post the recv of one message carrying several layers, into one buffer; each layer's
        payload is its slice (a layer no reservation takes is received there and dropped)."""
        admitted: list[_Posted] = []
        try:
            for entry in message:
                admitted.append(_Posted(self._admit_sized(entry), entry, None, []))
        except Exception:
            self._unadmit_all(admitted)
            raise
        buffer = pool.take(sum(entry.nbytes for entry in message))
        works = link.post_payload(buffer)
        posted, offset = [], 0
        for post in admitted:  # the first layer waits for the message (a gloo work is waited for once)
            flat, offset = buffer[offset: offset + post.header.nbytes], offset + post.header.nbytes
            posted.append(_Posted(post.res, post.header, flat, [] if posted else works,
                                  release=buffer if post is admitted[-1] else None))
        return posted

    def _admit_sized(self, entry: LayerHeader) -> Reservation | None:
        """`_admit`, refusing a payload no reservation takes that claims more than max_layer_bytes."""
        res = self._admit(entry)
        if res is None and entry.nbytes > self.config.max_layer_bytes:
            raise ValueError(f"header claims {entry.nbytes} bytes, above max_layer_bytes")
        return res

    def _wait(self, link: PairLink, post: _Posted, later: list[_Posted]) -> None:
        """Wait for one payload; if it fails, the admitted layers not received are expected again."""
        deadline = post.res.deadline if post.res is not None else time.monotonic() + self.config.timeout_s
        try:
            link.wait_all(post.works, deadline - time.monotonic())
        except Exception:
            self._unadmit_all([post] + later)
            raise

    def _unadmit_all(self, posted: list[_Posted]) -> None:
        for post in reversed(posted):
            if post.res is not None:
                self._unadmit(post.res, post.header)

    def _flush(self, received: _Received | None, pool: _BufferPool) -> None:
        """Deliver a received layer (if any) and give its buffer back; returns None, the new `pending`."""
        if received is not None:
            # kv: [2, num_tokens, num_kv_heads, head_dim] over the receive buffer
            kv = received.flat.view(received.res.meta.torch_dtype).view(received.res.meta.layer_shape)
            self._deliver(received.res, received.header, kv)
            if received.release is not None:
                pool.give(received.release)
        return None


def _messages(entries: list[LayerHeader]) -> list[list[LayerHeader]]:
    """The header's entries as they travel: a JOINED entry goes with the payload entry before it."""
    messages: list[list[LayerHeader]] = []
    for entry in entries:
        if entry.kind is Kind.JOINED and messages and messages[-1][-1].has_payload:
            messages[-1].append(entry)
        else:
            messages.append([entry])
    return messages


@dataclass(frozen=True)
class _Posted:
    res: Reservation | None  # None: drained
    header: LayerHeader
    flat: torch.Tensor | None  # uint8 [nbytes] from the pool (a slice of a joined message's buffer)
    works: list  # its recvs ([] for the later layers of a joined message: the first one's cover them)
    release: torch.Tensor | None = None  # the pool buffer to give back once this layer is delivered


@dataclass(frozen=True)
class _Received:
    res: Reservation
    header: LayerHeader
    flat: torch.Tensor  # uint8 [nbytes] from the pair's pool
    release: torch.Tensor | None

    @property
    def is_last(self) -> bool:
        return self.header.layer == self.res.meta.num_layers - 1


class _BufferPool:
    """Receive buffers reused across layers and requests: at most KEEP (and KEEP_BYTES) kept, each
    served as a prefix."""

    KEEP = MAX_FLIGHT_LAYERS + POST_AHEAD + 2
    KEEP_BYTES = 256 << 20  # two flights of the sender's MAX_FLIGHT_BYTES

    def __init__(self, device: str) -> None:
        self.device = device
        self.free: list[torch.Tensor] = []  # whole buffers, ascending size

    def take(self, nbytes: int) -> torch.Tensor:
        for i, buffer in enumerate(self.free):
            if buffer.numel() >= nbytes:
                return self.free.pop(i)[:nbytes]
        if len(self.free) >= self.KEEP:
            self.free.pop(0)
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def give(self, flat: torch.Tensor) -> None:
        whole = flat if flat._base is None else flat._base
        self.free.append(whole)
        self.free.sort(key=torch.Tensor.numel)
        del self.free[: max(0, len(self.free) - self.KEEP)]
        while sum(buffer.numel() for buffer in self.free) > self.KEEP_BYTES:
            self.free.pop()  # the largest
