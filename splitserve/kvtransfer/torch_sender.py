"""`TorchSender`: the prefill side of the torch.distributed backend (one per decode node).

One background thread per destination moves jobs in the order they were enqueued. It takes
every layer already queued (up to MAX_FLIGHT_LAYERS and MAX_FLIGHT_BYTES) as one flight: a
single header message listing them (plus the CHECKSUM entries still owed), on the pair group
(formed on first use, see `torch_pair`). While the receiver posts the flight's recvs, this
thread hashes its layers; then, on the receiver's ack, it posts the payloads straight from the
caller's tensors (gloo writes each at once: its recv is waiting). Hashing the rest after the
payloads are posted, once the ack is there, measured no faster on 2 cores: the hash then
takes CPU from gloo's copies. The CHECKSUM entries ride in the next flight's header, or in a
header of their own when nothing else is queued. A flight is confirmed when its sends complete; the previous one is waited for
after the next is posted.
Every wait is bounded by the request's remaining time. When an op fails the group is
dropped; the unconfirmed flights are posted once more on a fresh group if the failed group
had worked before (the receiver restarted or closed an idle group), else their requests
FAIL. A layer counts as sent once its payload and its checksum were handed over; sender DONE
means every layer was; whether the decode node accepted them is the decode node's state.
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
from splitserve.kvtransfer.checksum import ChecksumKind, checksum, kind_for, layer_seed
from splitserve.kvtransfer.wire import MAX_FLIGHT_LAYERS, Kind, LayerHeader, as_bytes, encode_entries, request_hash

MAX_FLIGHT_BYTES = 128 << 20  # bounds the receive buffers a flight makes the receiver hold (one layer at least)


@dataclass(frozen=True)
class _Owed:
    """A hashed layer whose CHECKSUM entry is still to be sent."""

    job: Job
    entry: LayerHeader


@dataclass
class _Flight:
    """One header message and the payloads of its LAYER entries."""

    jobs: list[Job]  # LAYER jobs, in entry order
    owed: list[_Owed]  # CHECKSUM entries it carries
    works: list = field(default_factory=list)
    retried: bool = False
    hashed: list[_Owed] | None = None  # CHECKSUM entries of its layers, once computed

    def words(self) -> torch.Tensor:
        return encode_entries([_layer_entry(job) for job in self.jobs] + [o.entry for o in self.owed])

    def parts(self) -> list[tuple[Job, str]]:
        """(job, what) of every entry, for failure reasons."""
        return [(job, f"layer {job.layer}") for job in self.jobs] + [(o.job, f"layer {o.job.layer} checksum")
                                                                      for o in self.owed]


def _layer_entry(job: Job) -> LayerHeader:
    kind = kind_for(job.kv.device) if job.meta.checksum else ChecksumKind.NONE
    return LayerHeader.for_layer(job.meta, job.layer, kind)


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
        self._held: deque[Job | None] = deque()  # taken from _jobs while gathering a flight, not yet run
        self._owed: list[_Owed] = []
        self._thread = threading.Thread(target=self._run, name=f"kv-send-{address}", daemon=True)
        self._thread.start()

    @property
    def num_groups_formed(self) -> int:
        return self._generation

    def _submit(self, job: Job) -> None:
        if job.kind in (JobKind.LAYER, JobKind.ABORT):  # begin and finish are state only: no wake-up
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
                job = self._next_job(block=not flights and not self._owed)
            except queue.Empty:  # nothing new: send the checksums owed, let the flights finish
                if self._owed:
                    self._launch([], flights)
                else:
                    self._settle(flights, keep=0)
                continue
            if job is None:
                break
            if job.kind is JobKind.LAYER:
                self._launch(self._gather(job), flights)
            elif job.kind is JobKind.ABORT:
                self._settle(flights, keep=0)
                self._send_abort(job)
        self._drop_link()

    def _next_job(self, block: bool) -> Job | None:
        return self._held.popleft() if self._held else self._jobs.get(block=block)

    def _gather(self, first: Job) -> list[Job]:
        """`first` and the LAYER jobs queued right behind it (at most MAX_FLIGHT_LAYERS and
        MAX_FLIGHT_BYTES), of live requests."""
        jobs, nbytes = [first], first.meta.layer_nbytes
        while len(jobs) < MAX_FLIGHT_LAYERS:
            try:
                job = self._next_job(block=False)
            except queue.Empty:
                break
            if job is None or job.kind is not JobKind.LAYER or nbytes + job.meta.layer_nbytes > MAX_FLIGHT_BYTES:
                self._held.appendleft(job)
                break
            jobs.append(job)
            nbytes += job.meta.layer_nbytes
        return [job for job in jobs if self._is_live(job.meta.request_id)]

    def _launch(self, jobs: list[Job], flights: deque[_Flight]) -> None:
        """Post one flight (these layers + the checksums owed), hash its layers, confirm the one before."""
        owed, self._owed = self._owed, []
        if not jobs and not owed:
            return
        for job in jobs:
            if job.ready is not None:
                torch.cuda.current_stream(job.kv.device).wait_event(job.ready)
        flight = _Flight(jobs, owed)
        self._post(flight, flights, while_unacked=lambda: self._hash(flight))
        self._hash(flight)
        self._owed = [o for o in flight.hashed if self._is_live(o.job.meta.request_id)]
        self._settle(flights, keep=1)

    def _hash(self, flight: _Flight) -> None:
        """The CHECKSUM entries of the flight's layers, computed once (while its header waits for the ack)."""
        if flight.hashed is None:
            flight.hashed = [_Owed(job, self._checksum_entry(job)) for job in flight.jobs if job.meta.checksum]

    def _checksum_entry(self, job: Job) -> LayerHeader:
        rhash = request_hash(job.meta.request_id)
        kind = kind_for(job.kv.device)
        value = checksum(kind, as_bytes(job.kv), layer_seed(rhash, job.layer))
        return LayerHeader(Kind.CHECKSUM, rhash, job.layer, checksum=value, checksum_kind=kind)

    def _post(self, flight: _Flight, flights: deque[_Flight], while_unacked=lambda: None) -> bool:
        rid = (flight.jobs or [o.job for o in flight.owed])[0].meta.request_id
        flights.append(flight)
        try:
            link = self._ensure_link(rid)
            flight.works = [link.post_header(flight.words())]
            if flight.jobs:
                while_unacked()
                link.wait_ack(self._flight_remaining_s(flight))
                for job in flight.jobs:
                    self._mark_sending(job.meta.request_id)
                flight.works += link.post_payloads([as_bytes(job.kv) for job in flight.jobs])
            return True
        except Exception as exc:
            self._recover(flights, exc)
            return False

    def _settle(self, flights: deque[_Flight], keep: int) -> None:
        """Wait for the oldest posted flights until at most `keep` are unconfirmed."""
        while len(flights) > keep:
            flight = flights[0]
            try:
                self._link.wait_all(flight.works, self._flight_remaining_s(flight))
            except Exception as exc:
                self._recover(flights, exc)
                continue
            flights.popleft()
            self._link_proven = True
            for job in [job for job in flight.jobs if not job.meta.checksum] + [o.job for o in flight.owed]:
                self._layer_sent(job.meta.request_id, job.meta.layer_nbytes)

    def _flight_remaining_s(self, flight: _Flight) -> float:
        return max(self._remaining_s(job.meta.request_id) for job, _ in flight.parts())

    def _recover(self, flights: deque[_Flight], exc: Exception) -> None:
        """The group broke: drop it. If it had worked before (stale: the receiver restarted or
        closed it when idle), post each unconfirmed flight once more on a fresh group; otherwise,
        or if that fails too, their requests FAIL."""
        proven, pending = self._link_proven, list(flights)
        self._drop_link()
        flights.clear()
        reason = f"{type(exc).__name__}: {_short(exc)}"
        for i, flight in enumerate(pending):
            if not proven or flight.retried:
                self._fail_flight(flight, reason)
                continue
            flight.retried = True
            if not self._post(flight, flights):
                for rest in pending[i + 1:]:
                    self._fail_flight(rest, reason)
                return

    def _fail_flight(self, flight: _Flight, reason: str) -> None:
        for job, what in flight.parts():
            self._fail(job.meta.request_id, f"{what}: {reason}")

    def _send_abort(self, job: Job) -> None:
        if self._link is None:
            return  # nothing of it reached the peer on a live group; its timeout will fire
        try:
            self._link.send_header(LayerHeader(Kind.ABORT, request_hash(job.meta.request_id)).encode(),
                                   self.config.connect_timeout_s)
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
