"""`TorchSender`: the prefill side of the torch.distributed backend (one per decode node).

One background thread per destination moves jobs in the order they were enqueued: for each
layer, the header then the payload chunks on the pair group (formed on first use, see
`torch_pair`). Every wait is bounded by the request's remaining time. When an op fails the
group is dropped; the failing layer is retried once on a fresh group if the failed group
was an old one (the receiver restarted or closed an idle group), then the request FAILS.
Sender DONE means every layer was handed to the peer's transport; whether the decode node
accepted them is the decode node's state to report.
"""

from __future__ import annotations

import queue
import threading
import uuid

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
        while (job := self._jobs.get()) is not None:
            if job.kind is JobKind.LAYER:
                self._send_layer(job)
            elif job.kind is JobKind.ABORT:
                self._send_abort(job)
        self._drop_link()

    def _send_layer(self, job: Job) -> None:
        rid = job.meta.request_id
        if not self._is_live(rid):
            return
        if job.ready is not None:
            torch.cuda.current_stream(job.kv.device).wait_event(job.ready)
        crc = layer_checksum(job.kv) if job.meta.checksum else None
        header = LayerHeader.for_layer(job.meta, job.layer, crc)
        for attempt in range(2):
            fresh = self._link is None
            try:
                link = self._ensure_link(rid)
                self._mark_sending(rid)
                link.send_header(header, self._remaining_s(rid))
                link.send_payload(as_bytes(job.kv), self._remaining_s(rid))
                self._layer_sent(rid, header.nbytes)
                return
            except Exception as exc:
                self._drop_link()
                if fresh or attempt == 1 or not self._is_live(rid):
                    self._fail(rid, f"layer {job.layer}: {type(exc).__name__}: {_short(exc)}")
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
        group = make_group(self._store, pair_key, SENDER_RANK, self.config.device, timeout_s)
        self._link = PairLink(group, SENDER_RANK, self.config.device)
        return self._link

    def _drop_link(self) -> None:
        link, self._link, self._store = self._link, None, None
        if link is not None:
            link.close()


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""
