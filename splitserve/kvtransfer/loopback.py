"""`loopback`: an in-process sender/receiver pair, the fake for tests and warm-up.

It runs the same state machines as the real backends (`TrackedSender`, `TrackedReceiver`)
with the wire replaced by a direct call: the sender's thread hands each layer's tensor to
the receiver's `_admit` / `_deliver`. A `LoopbackReceiver` registers itself under
`loopback:<n>` until closed; `make_sender("loopback", receiver.address)` finds it.
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref

from splitserve.kvtransfer.base import TransferConfig
from splitserve.kvtransfer.receiver_base import TrackedReceiver
from splitserve.kvtransfer.sender_base import Job, JobKind, TrackedSender, checksum_kind, layer_checksum
from splitserve.kvtransfer.wire import LayerHeader, request_hash

_receivers: weakref.WeakValueDictionary[str, LoopbackReceiver] = weakref.WeakValueDictionary()
_numbers = itertools.count(1)


class LoopbackReceiver(TrackedReceiver):
    def __init__(self, config: TransferConfig = TransferConfig(), host: str = "", port: int = 0) -> None:  # no listener
        super().__init__(config)
        self._address = f"loopback:{next(_numbers)}"
        _receivers[self._address] = self

    @property
    def address(self) -> str:
        return self._address

    def close(self) -> None:
        _receivers.pop(self._address, None)
        self._fail_all("receiver closed")


class LoopbackSender(TrackedSender):
    def __init__(self, address: str, config: TransferConfig = TransferConfig()) -> None:
        super().__init__(config)
        self.address = address
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kv-send-loopback", daemon=True)
        self._thread.start()

    def _submit(self, job: Job) -> None:
        self._jobs.put(job)

    def _shutdown(self) -> None:
        self._jobs.put(None)
        self._thread.join(5.0)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            receiver = _receivers.get(self.address)
            rid = job.meta.request_id
            if receiver is None:
                self._fail(rid, f"no loopback receiver at {self.address}")
            elif job.kind is JobKind.ABORT:
                receiver._sender_aborted(request_hash(rid))
            elif job.kind is JobKind.LAYER and self._is_live(rid):
                kind = checksum_kind(job)
                header = LayerHeader.for_layer(job.meta, job.layer, kind)
                self._mark_sending(rid)
                res = receiver._admit(header)
                if res is not None:
                    if job.meta.checksum:
                        receiver._expect_checksum(res, job.layer, kind, layer_checksum(job))
                    receiver._deliver(res, header, job.kv)
                self._layer_sent(rid, header.nbytes)
