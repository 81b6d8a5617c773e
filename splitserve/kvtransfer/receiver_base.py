"""State keeping shared by every receiver backend: `TrackedReceiver`.

A backend's thread, for each incoming LAYER entry, calls `_admit(header)`: it returns the
live reservation the layer belongs to (and counts the layer as admitted, so the next header
may arrive before this layer is written), or None, in which case the payload must be drained
and discarded (the reservation, if any, is FAILED with the reason). If the payload then
fails to arrive, `_unadmit` takes the count back (the sender may retry on a new group).
Received layers go to `_deliver(reservation, header, kv)`, in order, which hashes them (when
the transfer is checksummed) and runs `write_layer` under the reservation's `write_lock`
(or, for a layer checksummed with MULSUM_64, the reservation's `write_hashed`, which hashes
while it writes):
`abort` and the timeout take the same lock, so once a reservation is FAILED no write is
running or will start. `write_layer` must not call back into the receiver.

Checksums are verified per layer whenever both halves are known, in either order: the hash of
the received bytes (`_deliver`) and the sender's value (`_expect_checksum`: the gRPC backend
has it with the layer, the torch backend in a later header). A checksummed reservation is DONE
only when every layer is written and verified; a mismatch FAILS it ("layer N: checksum
mismatch") and counts in `num_checksum_failures`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from splitserve.kvtransfer.base import (
    FINAL_RECV_STATES,
    KVReceiver,
    RecvState,
    TransferConfig,
    TransferInfo,
    TransferMeta,
    WriteHashed,
    WriteLayer,
)
from splitserve.kvtransfer.checksum import ChecksumKind, checksum, layer_seed
from splitserve.kvtransfer.sender_base import prune_history
from splitserve.kvtransfer.wire import LayerHeader, as_bytes, request_hash


@dataclass
class Reservation:
    meta: TransferMeta
    write_layer: WriteLayer
    write_hashed: WriteHashed | None
    deadline: float
    started: float = field(default_factory=time.monotonic)
    state: RecvState = RecvState.RESERVED
    reason: str = ""
    next_layer: int = 0  # layers admitted
    num_written: int = 0
    num_bytes: int = 0
    ended: float | None = None
    hashes: dict[int, tuple[int, int]] = field(default_factory=dict)  # layer -> (kind, value) received, unverified
    expected: dict[int, tuple[int, int]] = field(default_factory=dict)  # layer -> (kind, value) from the sender
    num_verified: int = 0
    listeners: list = field(default_factory=list)  # when_ended callbacks, called once at the end
    guard: threading.Lock = field(default_factory=threading.Lock)  # state and counters
    write_lock: threading.Lock = field(default_factory=threading.Lock)  # held while write_layer runs; before guard


class TrackedReceiver(KVReceiver):
    def __init__(self, config: TransferConfig) -> None:
        self.config = config
        self._table_lock = threading.Lock()
        self._by_id: OrderedDict[str, Reservation] = OrderedDict()
        self._by_hash: dict[int, Reservation] = {}  # active reservations only
        self._num_discarded = 0
        self._num_checksum_failures = 0

    def expect(self, meta: TransferMeta, write_layer: WriteLayer, write_hashed: WriteHashed | None = None) -> None:
        key = request_hash(meta.request_id)
        with self._table_lock:
            old = self._by_hash.get(key)
            if old is not None and old.state not in FINAL_RECV_STATES:
                raise ValueError(f"transfer {meta.request_id!r} is already expected (or its hash collides)")
            self._by_id.pop(meta.request_id, None)
            res = Reservation(meta, write_layer, write_hashed, time.monotonic() + self.config.timeout_s)
            self._by_id[meta.request_id] = res
            self._by_hash[key] = res
            prune_history(self._by_id, lambda r: r.state in FINAL_RECV_STATES, self.config.history)

    def poll(self, request_id: str) -> RecvState:
        res = self._get(request_id)
        self._expire(res)
        return res.state

    def when_ended(self, request_id: str, callback) -> None:
        res = self._get(request_id)
        with res.guard:
            if res.state not in FINAL_RECV_STATES:
                res.listeners.append(callback)
                return
        callback(res.state)

    def info(self, request_id: str) -> TransferInfo:
        res = self._get(request_id)
        self._expire(res)
        elapsed = (res.ended or time.monotonic()) - res.started
        return TransferInfo(request_id, res.state, res.reason, res.num_written, res.num_bytes, elapsed, res.ended)

    def abort(self, request_id: str) -> None:
        try:
            res = self._get(request_id)
        except KeyError:
            return
        self._fail(res, "aborted")

    @property
    def num_discarded(self) -> int:
        """Layers drained because no live reservation matched them."""
        return self._num_discarded

    @property
    def num_checksum_failures(self) -> int:
        """Transfers failed because a layer's bytes did not match the sender's checksum."""
        return self._num_checksum_failures

    def _fail_all(self, reason: str) -> None:
        with self._table_lock:
            active = list(self._by_hash.values())
        for res in active:
            self._fail(res, reason)

    # -- for the backend's thread -------------------------------------------------------

    def _admit(self, header: LayerHeader) -> Reservation | None:
        """The live reservation this LAYER header belongs to, or None (drain the payload)."""
        with self._table_lock:
            res = self._by_hash.get(header.request_hash)
        reason = ""
        if res is not None:
            self._expire(res)
            with res.guard:
                if res.state not in FINAL_RECV_STATES:
                    reason = header.mismatch(res.meta, res.next_layer)
                    if not reason:
                        res.next_layer += 1
                        res.state = RecvState.RECEIVING
                        return res
        if reason:
            self._fail(res, reason)
        self._num_discarded += 1
        return None

    def _unadmit(self, res: Reservation, header: LayerHeader) -> None:
        """The admitted layer's payload never arrived: expect it again."""
        with res.guard:
            if res.state not in FINAL_RECV_STATES and res.next_layer == header.layer + 1:
                res.next_layer -= 1

    def _deliver(self, res: Reservation, header: LayerHeader, kv: torch.Tensor) -> None:
        """Hash (if checksummed) and write one received layer (`kv` is the receive buffer, valid only now)."""
        with res.write_lock:
            with res.guard:
                if res.state in FINAL_RECV_STATES:
                    return
            reason = self._write(res, header, kv)
            if not reason:
                with res.guard:
                    res.num_written += 1
                    res.num_bytes += header.nbytes
                    self._maybe_done(res)
                return
        self._fail(res, reason)

    def _write(self, res: Reservation, header: LayerHeader, kv: torch.Tensor) -> str:
        if self._past_deadline(res):
            return f"timed out after {self.config.timeout_s:g}s"
        if not res.meta.checksum:
            return _call(header.layer, "write_layer", res.write_layer, header.layer, kv)
        seed, value = layer_seed(header.request_hash, header.layer), None
        fused = header.checksum_kind is ChecksumKind.MULSUM_64 and res.write_hashed is not None
        if fused:  # written, then verified: a mismatch fails the reservation, whose blocks are freed unread
            reason, value = _call_for(header.layer, "write_hashed", res.write_hashed, header.layer, kv, seed)
            if reason:
                return reason
        if value is None:
            value = checksum(header.checksum_kind, as_bytes(kv), seed)
        reason = self._record(res, res.hashes, header.layer, (int(header.checksum_kind), value))
        if reason or fused:
            return reason
        return _call(header.layer, "write_layer", res.write_layer, header.layer, kv)

    def _expect_checksum(self, res: Reservation, layer: int, kind: ChecksumKind, value: int) -> None:
        """The sender's checksum of `layer` (a CHECKSUM entry, or a gRPC layer's last chunk)."""
        if not res.meta.checksum:
            return
        reason = self._record(res, res.expected, layer, (int(kind), value))
        if reason:
            self._fail(res, reason)
            return
        with res.guard:
            self._maybe_done(res)

    def _record(self, res: Reservation, into: dict, layer: int, value: tuple[int, int]) -> str:
        """Store one half of a layer's check; verify when both are there. Returns a failure reason."""
        with res.guard:
            if res.state in FINAL_RECV_STATES:
                return ""
            if not 0 <= layer < res.meta.num_layers or layer in into:
                return f"layer {layer}: unexpected checksum"
            into[layer] = value
            if layer not in res.hashes or layer not in res.expected:
                return ""
            if res.hashes.pop(layer) != res.expected.pop(layer):
                self._num_checksum_failures += 1
                return f"layer {layer}: checksum mismatch"
            res.num_verified += 1
            return ""

    def _maybe_done(self, res: Reservation) -> None:
        """(holds res.guard) DONE once every layer is written and, if checksummed, verified."""
        verified = not res.meta.checksum or res.num_verified == res.meta.num_layers
        if res.state not in FINAL_RECV_STATES and res.num_written == res.meta.num_layers and verified:
            self._end(res, RecvState.DONE, "")
            self._drop_active(res)

    def _checksum_entry(self, header: LayerHeader) -> None:
        """A CHECKSUM entry: the sender's value for a layer of a live reservation (else ignored)."""
        with self._table_lock:
            res = self._by_hash.get(header.request_hash)
        if res is not None:
            self._expect_checksum(res, header.layer, header.checksum_kind, header.checksum)

    def _sender_aborted(self, request_hash_: int) -> None:
        with self._table_lock:
            res = self._by_hash.get(request_hash_)
        if res is not None:
            self._fail(res, "sender aborted")

    # -- internals ----------------------------------------------------------------------

    def _get(self, request_id: str) -> Reservation:
        with self._table_lock:
            return self._by_id[request_id]

    def _past_deadline(self, res: Reservation) -> bool:
        return time.monotonic() > res.deadline

    def _expire(self, res: Reservation) -> None:
        if res.state not in FINAL_RECV_STATES and self._past_deadline(res):
            self._fail(res, f"timed out after {self.config.timeout_s:g}s")

    def _fail(self, res: Reservation, reason: str) -> None:
        with res.write_lock, res.guard:
            if res.state not in FINAL_RECV_STATES:
                self._end(res, RecvState.FAILED, reason)
        self._drop_active(res)

    def _end(self, res: Reservation, state: RecvState, reason: str) -> None:
        """(holds res.guard) The final state, then its listeners."""
        res.state, res.reason, res.ended = state, reason, time.monotonic()
        listeners, res.listeners = res.listeners, []
        for callback in listeners:
            callback(state)

    def _drop_active(self, res: Reservation) -> None:
        with self._table_lock:
            key = request_hash(res.meta.request_id)
            if self._by_hash.get(key) is res:
                del self._by_hash[key]


def _call_for(layer: int, name: str, fn, *args) -> tuple[str, object]:
    """(failure reason or "", result) of the decode node's callback, which must not kill our thread."""
    try:
        return "", fn(*args)
    except Exception as exc:
        return f"layer {layer}: {name} raised {type(exc).__name__}: {exc}", None


def _call(layer: int, name: str, fn, *args) -> str:
    return _call_for(layer, name, fn, *args)[0]
