"""State keeping shared by every sender backend: `TrackedSender`.

`TrackedSender` implements the whole `KVSender` surface (validation, states, timeouts, wait,
history) and turns the caller's calls into `Job`s handed to the backend's `_submit`, which
must not block. The backend's thread reports back through `_mark_sending`, `_layer_sent`,
`_fail` and checks `_is_live` before moving bytes of a request that may have failed meanwhile.
"""

from __future__ import annotations

import enum
import threading
import time
from abc import abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from splitserve.kvtransfer.base import (
    FINAL_SEND_STATES,
    KVSender,
    SendState,
    TransferConfig,
    TransferInfo,
    TransferMeta,
)
from splitserve.kvtransfer.checksum import ChecksumKind, checksum, kind_for
from splitserve.kvtransfer.wire import as_bytes, check_layer_tensor, checksum_seed


class JobKind(enum.Enum):
    BEGIN = "begin"
    LAYER = "layer"
    FINISH = "finish"
    ABORT = "abort"


@dataclass(frozen=True)
class Job:
    kind: JobKind
    meta: TransferMeta
    layer: int = -1
    kv: torch.Tensor | None = None
    ready: object | None = None  # torch.cuda.Event recorded on the caller's stream
    checksum: int | None = None  # the layer's MULSUM_64, computed by the caller while it copied the layer


def checksum_kind(job: Job) -> ChecksumKind:
    """The algorithm of a layer job's checksum: MULSUM_64 where the caller hashed the layer, else
    the one for its device; NONE when the transfer is not checksummed."""
    if not job.meta.checksum:
        return ChecksumKind.NONE
    return ChecksumKind.MULSUM_64 if job.checksum is not None else kind_for(job.kv.device)


def layer_checksum(job: Job) -> int:
    """A checksummed layer job's checksum value (`checksum_kind(job)`): the caller's, else hashed now."""
    if job.checksum is not None:
        return job.checksum
    return checksum(kind_for(job.kv.device), as_bytes(job.kv), checksum_seed(job.meta.request_id, job.layer))


@dataclass
class _Record:
    meta: TransferMeta
    deadline: float
    started: float = field(default_factory=time.monotonic)
    state: SendState = SendState.PENDING
    reason: str = ""
    num_enqueued: int = 0
    num_sent: int = 0
    num_bytes: int = 0
    finished: bool = False
    ended: float | None = None


def prune_history(records: OrderedDict, is_final, keep: int) -> None:
    """Forget the oldest final records until at most `keep` are left (active ones are never
    dropped). Walks from the oldest and stops as soon as enough are gone: a begin() costs O(1),
    not a scan of the whole history (4,096 records: 0.5 ms on the caller's thread)."""
    excess = len(records) - keep
    if excess <= 0:
        return
    doomed = []
    for key, rec in records.items():
        if len(doomed) == excess:
            break
        if is_final(rec):
            doomed.append(key)
    for key in doomed:
        del records[key]


class TrackedSender(KVSender):
    # True: DONE when every layer was handed to the transport (torch); False: the backend
    # calls `_complete` when the receiver confirmed (grpc reply).
    DONE_WHEN_SENT = True

    def __init__(self, config: TransferConfig) -> None:
        self.config = config
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False

    @property
    def device(self) -> str:
        return self.config.device

    @abstractmethod
    def _submit(self, job: Job) -> None:
        """Hand a job to the transport (never blocks)."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Stop the transport's threads and release it (after every request failed)."""

    def begin(self, meta: TransferMeta) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("sender is closed")
            old = self._records.get(meta.request_id)
            if old is not None and old.state not in FINAL_SEND_STATES:
                raise ValueError(f"transfer {meta.request_id!r} is already active")
            self._records.pop(meta.request_id, None)
            self._records[meta.request_id] = _Record(meta, time.monotonic() + self.config.timeout_s)
            prune_history(self._records, lambda r: r.state in FINAL_SEND_STATES, self.config.history)
        self._submit(Job(JobKind.BEGIN, meta))

    def send_layer(self, request_id: str, layer: int, kv: torch.Tensor, checksum: int | None = None) -> None:
        with self._cond:
            rec = self._live_record(request_id)
            if rec is None:
                return
            if rec.finished or layer != rec.num_enqueued:
                raise ValueError(f"{request_id!r}: layer {layer} out of order (next is {rec.num_enqueued})")
            check_layer_tensor(rec.meta, layer, kv)
            self._check_device(kv)
            rec.num_enqueued += 1
        ready = None
        if kv.is_cuda:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(kv.device))
        self._submit(Job(JobKind.LAYER, rec.meta, layer, kv, ready, checksum))

    def finish(self, request_id: str) -> None:
        with self._cond:
            rec = self._live_record(request_id)
            if rec is None:
                return
            if rec.num_enqueued != rec.meta.num_layers:
                raise ValueError(f"{request_id!r}: finish after {rec.num_enqueued} of {rec.meta.num_layers} layers")
            rec.finished = True
            self._maybe_done(rec)
        self._submit(Job(JobKind.FINISH, rec.meta))

    def poll(self, request_id: str) -> SendState:
        with self._cond:
            return self._current(request_id).state

    def wait(self, request_id: str, timeout_s: float) -> SendState:
        end = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while True:
                rec = self._current(request_id)
                now = time.monotonic()
                if rec.state in FINAL_SEND_STATES or now >= end:
                    return rec.state
                self._cond.wait(min(end, rec.deadline) - now + 1e-3)

    def info(self, request_id: str) -> TransferInfo:
        with self._cond:
            rec = self._current(request_id)
            elapsed = (rec.ended or time.monotonic()) - rec.started
            return TransferInfo(request_id, rec.state, rec.reason, rec.num_sent, rec.num_bytes, elapsed, rec.ended)

    def abort(self, request_id: str) -> None:
        with self._cond:
            if request_id not in self._records:
                return
            rec = self._live_record(request_id)
            if rec is None:
                return
            self._set_failed(rec, "aborted")
        self._submit(Job(JobKind.ABORT, rec.meta))

    def abandon(self, request_id: str, reason: str) -> None:
        """Fail a transfer here without telling the peer (fault injection: a connection that
        died midway); the receiver's own timeout frees its side."""
        self._fail(request_id, reason)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for rec in self._records.values():
                self._set_failed(rec, "sender closed")
        self._shutdown()

    # -- for the backend's thread -------------------------------------------------------

    def _is_live(self, request_id: str) -> bool:
        with self._cond:
            return self._live_record(request_id) is not None

    def _remaining_s(self, request_id: str) -> float:
        with self._cond:
            rec = self._records.get(request_id)
            return 0.0 if rec is None else max(0.0, rec.deadline - time.monotonic())

    def _mark_sending(self, request_id: str) -> None:
        with self._cond:
            rec = self._live_record(request_id)
            if rec is not None and rec.state is SendState.PENDING:
                rec.state = SendState.SENDING

    def _layer_sent(self, request_id: str, nbytes: int) -> None:
        with self._cond:
            rec = self._live_record(request_id)
            if rec is not None:
                rec.num_sent += 1
                rec.num_bytes += nbytes
                self._maybe_done(rec)

    def _complete(self, request_id: str) -> None:
        """The receiver confirmed the whole transfer (DONE_WHEN_SENT = False backends)."""
        with self._cond:
            rec = self._live_record(request_id)
            if rec is None:
                return
            if rec.finished and rec.num_sent == rec.meta.num_layers:
                self._end(rec, SendState.DONE, "")
            else:
                self._set_failed(rec, f"peer confirmed after {rec.num_sent} of {rec.meta.num_layers} layers")

    def _fail(self, request_id: str, reason: str) -> None:
        with self._cond:
            rec = self._records.get(request_id)
            if rec is not None:
                self._set_failed(rec, reason)

    # -- internals (hold self._cond) ----------------------------------------------------

    def _check_device(self, kv: torch.Tensor) -> None:
        want = torch.device(self.config.device)
        if kv.device.type != want.type or (want.index is not None and kv.device.index != want.index):
            raise ValueError(f"kv is on {kv.device}, this sender moves tensors on {self.config.device}")

    def _current(self, request_id: str) -> _Record:
        rec = self._records[request_id]
        if rec.state not in FINAL_SEND_STATES and time.monotonic() > rec.deadline:
            self._set_failed(rec, f"timed out after {self.config.timeout_s:g}s")
        return rec

    def _live_record(self, request_id: str) -> _Record | None:
        rec = self._current(request_id)
        return None if rec.state in FINAL_SEND_STATES else rec

    def _maybe_done(self, rec: _Record) -> None:
        done = rec.finished and rec.num_sent == rec.meta.num_layers
        if self.DONE_WHEN_SENT and done and rec.state not in FINAL_SEND_STATES:
            self._end(rec, SendState.DONE, "")

    def _set_failed(self, rec: _Record, reason: str) -> None:
        if rec.state not in FINAL_SEND_STATES:
            self._end(rec, SendState.FAILED, reason)

    def _end(self, rec: _Record, state: SendState, reason: str) -> None:
        rec.state, rec.reason, rec.ended = state, reason, time.monotonic()
        self._cond.notify_all()
