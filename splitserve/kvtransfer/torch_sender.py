"""`TorchSender`: the prefill side of the torch.distributed backend (one per decode node).

One background thread per destination moves jobs in the order they were enqueued: for each
layer, the header then the payload chunks on the pair group (formed on first use, see
`torch_pair`), with up to WINDOW layers posted before the oldest is waited for. Every wait
is bounded by the request's remaining time. When an op fails the group is dropped; the
unconfirmed layers are posted once more on a fresh group if the failed group had worked
before (the receiver restarted or closed an idle group), else their requests FAIL.
Sender DONE means every layer was handed to the peer's transport; whether the decode node
accepted them is the decode node's state to report.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field

import torch

from splitserve.kvtransfer.base import TransferConfig
from splitserve.kvtransfer.sender_base import Job, JobKind, TrackedSender
from splitserve.kvtransfer.torch_pair import (
    INSTANCE_RE,
    JOIN_QUEUE,
    SENDER_RANK,
    PairLink,
    connect_store,
    join_message,
    make_group,
    split_address,
)
from splitserve.kvtransfer.wire import Kind, LayerHeader, as_bytes, layer_checksum, request_hash


WINDOW = 2  # layers posted but unconfirmed: posting layer l+1 overlaps waiting for layer l


@dataclass
class _Flight:
    job: Job
    header: LayerHeader
    works: list = field(default_factory=list)
    retried: bool = False


class TorchSender(TrackedSender):
    def __init__(self, address: str, config: TransferConfig = TransferConfig(), instance_id: str | None = None) -> None:
        super().__init__(config)
        split_address(address)
        self.address = address
        # names this sender's pair groups: a restarted prefill process must not reuse one
        self.instance = instance_id or uuid.uuid4().hex
        if not INSTANCE_RE.match(self.instance):
            raise ValueError(f"instance_id must match {INSTANCE_RE.pattern}, got {self.instance!r}")
        self._generation = 0
        self._store = None
        self._link: PairLink | None = None
        self._link_proven = False  # some op on the current group succeeded
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"kv-send-{address}", daemon=True)
        self._thread.start()

    @property
    def num_groups_formed(self) -> int:
        return self._generation

    def _submit(self, job: Job) -> None:
        self._jobs.put(job)

    def _shutdown(self) -> None:
        self._jobs.put(None)
        link = self._link
        if link is not None:
            link.close()  # wakes the thread if it is blocked in a send
        self._thread.join(self.config.connect_timeout_s + 1.0)

    def _run(self) -> None:
        flights: deque[_Flight] = deque()
        while True:
            try:
                job = self._jobs.get(block=not flights)
            except queue.Empty:  # nothing new: let the layers in flight finish
                self._settle(flights, keep=0)
                continue
            if job is None:
                break
            if job.kind is JobKind.LAYER and self._is_live(job.meta.request_id):
                self._post(self._flight(job), flights)
                self._settle(flights, keep=WINDOW - 1)
            elif job.kind is JobKind.ABORT:
                self._settle(flights, keep=0)
                self._send_abort(job)
        self._drop_link()

    def _flight(self, job: Job) -> _Flight:
        if job.ready is not None:
            torch.cuda.current_stream(job.kv.device).wait_event(job.ready)
        crc = layer_checksum(job.kv) if job.meta.checksum else None
        return _Flight(job, LayerHeader.for_layer(job.meta, job.layer, crc))

    def _post(self, flight: _Flight, flights: deque[_Flight]) -> bool:
        rid = flight.job.meta.request_id
        flights.append(flight)
        try:
            link = self._ensure_link(rid)
            self._mark_sending(rid)
            flight.works = link.post_layer(flight.header, as_bytes(flight.job.kv))
            return True
        except Exception as exc:
            self._recover(flights, exc)
            return False

    def _settle(self, flights: deque[_Flight], keep: int) -> None:
        """Wait for the oldest posted layers until at most `keep` are unconfirmed."""
        while len(flights) > keep:
            flight = flights[0]
            rid = flight.job.meta.request_id
            try:
                self._link.wait_all(flight.works, self._remaining_s(rid))
            except Exception as exc:
                self._recover(flights, exc)
                continue
            flights.popleft()
            self._link_proven = True
            self._layer_sent(rid, flight.header.nbytes)

    def _recover(self, flights: deque[_Flight], exc: Exception) -> None:
        """The group broke: drop it. If it had worked before (stale: the receiver restarted or
        closed it when idle), post each unconfirmed layer once more on a fresh group; otherwise,
        or if that fails too, their requests FAIL."""
        proven, pending = self._link_proven, list(flights)
        self._drop_link()
        flights.clear()
        reason = f"{type(exc).__name__}: {_short(exc)}"
        for i, flight in enumerate(pending):
            rid = flight.job.meta.request_id
            if not proven or flight.retried or not self._is_live(rid):
                self._fail(rid, f"layer {flight.job.layer}: {reason}")
                continue
            flight.retried = True
            if not self._post(flight, flights):
                for rest in pending[i + 1:]:
                    self._fail(rest.job.meta.request_id, f"layer {rest.job.layer}: {reason}")
                return

    def _send_abort(self, job: Job) -> None:
        if self._link is None:
            return  # nothing of it reached the peer on a live group; its timeout will fire
        try:
            self._link.send_header(LayerHeader(Kind.ABORT, request_hash(job.meta.request_id)), self.config.connect_timeout_s)
        except Exception:
            self._drop_link()

    def _ensure_link(self, request_id: str) -> PairLink:
        if self._link is not None:
            return self._link
        timeout_s = min(self.config.connect_timeout_s, self._remaining_s(request_id))
        if self._store is None:
            self._store = connect_store(self.address, timeout_s)
        self._generation += 1
        pair_key, message = join_message(self.instance, self._generation, self.config.device)
        self._store.queue_push(JOIN_QUEUE, message)
        group = make_group(self._store, pair_key, SENDER_RANK, self.config.device, timeout_s, self.config.idle_timeout_s)
        self._link = PairLink(group, SENDER_RANK, self.config.device)
        self._link_proven = False
        return self._link

    def _drop_link(self) -> None:
        link, self._link, self._store, self._link_proven = self._link, None, None, False
        if link is not None:
            link.close()


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""
