"""`TorchSender`: the prefill side of the torch.distributed backend (one per decode node).

One background thread per destination moves jobs in the order they were enqueued. It takes
every layer already queued (up to MAX_FLIGHT_LAYERS and MAX_FLIGHT_BYTES) as one flight: a
single header message listing them (plus the CHECKSUM entries still owed), on the pair group
(formed on first use, see `torch_pair`). Layers whose checksum the caller computed as it read
them (a prefill node on CPU) have their CHECKSUM entries in that same header: nothing to hash
here and no checksum header (one message fewer; against a header of their own it measured within
noise).
Otherwise it hashes the flight's layers while the header waits
for the receiver's ack, until the ack is there; then it posts the payloads straight from the
caller's tensors (gloo writes each at once: its recv is waiting), hashing each layer not hashed
yet right before posting it. gloo writes a posted send largely inside `send()`, on this thread,
and returns once the socket is full: the next layer's hash runs while the socket drains.
Hashing the whole flight before its payloads (wire v4 as first shipped) held the payloads
back at 34 MB; hashing after posting them all ran after all the writes. On gloo the flight's
CHECKSUM entries go in a header of their own ahead of its last payload (the receiver keeps a
header recv posted), so the last layer is verified as soon as it lands; on NCCL (ops in order,
no early header recv) they ride in the next flight's header or in a header of their own after
the flight. A flight is confirmed when its sends complete; the previous one is waited for
after the next is posted. Layers that lie back to back in memory (a prefill node reads them so,
into `joined_layers` buffers) leave as one payload message of up to JOIN_BYTES, announced by
JOINED entries: gloo pays per message (30 x 277 KB took 3.2-5.4 ms against 2.0-2.9 ms as 4).
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
from splitserve.kvtransfer.sender_base import Job, JobKind, TrackedSender, checksum_kind, layer_checksum
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
from splitserve.runtime.torch_threads import serially
from splitserve.kvtransfer.wire import (
    JOIN_BYTES,
    MAX_FLIGHT_LAYERS,
    Kind,
    LayerHeader,
    adjacent,
    as_bytes,
    checksum_words,
    encode_words,
    layer_words,
    request_hash,
    span_bytes,
)

MAX_FLIGHT_BYTES = 128 << 20  # bounds the receive buffers a flight makes the receiver hold (one layer at least)


@dataclass(frozen=True)
class _Owed:
    """A hashed layer whose CHECKSUM entry is still to be sent."""

    job: Job
    words: list[int]  # the entry's


@dataclass
class _Flight:
    """One header message and the payloads of its LAYER entries."""

    jobs: list[Job]  # LAYER jobs, in entry order
    owed: list[_Owed]  # CHECKSUM entries it carries
    works: list = field(default_factory=list)
    retried: bool = False
    num_hashed: int = 0  # its first layers, hashed (if checksummed) into `hashed`
    hashed: list[_Owed] = field(default_factory=list)  # CHECKSUM entries, in layer order
    messages: list[tuple[int, int]] = field(init=False)  # [first, end) of the jobs each payload message carries

    def __post_init__(self) -> None:
        self.messages = _messages(self.jobs)

    def words(self) -> torch.Tensor:
        joined = {i for first, end in self.messages for i in range(first + 1, end)}
        return encode_words([layer_words(job.meta, job.layer, checksum_kind(job), Kind.JOINED if i in joined else Kind.LAYER)
                             for i, job in enumerate(self.jobs)] + [o.words for o in self.owed])

    def parts(self) -> list[tuple[Job, str]]:
        """(job, what) of every entry, for failure reasons."""
        return [(job, f"layer {job.layer}") for job in self.jobs] + [(o.job, f"layer {o.job.layer} checksum")
                                                                      for o in self.owed]


def _read_hashed(job: Job) -> bool:
    """A checksummed layer whose checksum the caller computed as it read the layer: its CHECKSUM
    entry rides in its flight's own header, with the LAYER entries (no header of its own)."""
    return job.meta.checksum and job.checksum is not None


def _messages(jobs: list[Job]) -> list[tuple[int, int]]:
    """The jobs cut into payload messages, [first, end) each: a layer joins the message before it
    when it lies right after that message's last layer in memory, up to JOIN_BYTES a message."""
    messages: list[tuple[int, int]] = []
    nbytes = 0
    for i, job in enumerate(jobs):
        if messages and nbytes + job.meta.layer_nbytes <= JOIN_BYTES and adjacent(jobs[i - 1].kv, job.kv):
            messages[-1] = (messages[-1][0], i + 1)
            nbytes += job.meta.layer_nbytes
        else:
            messages.append((i, i + 1))
            nbytes = job.meta.layer_nbytes
    return messages


def _payload(jobs: list[Job]) -> torch.Tensor:
    """The bytes of one message: a layer's own, or a span over layers lying back to back."""
    if len(jobs) == 1:
        return as_bytes(jobs[0].kv)
    return span_bytes(jobs[0].kv, sum(job.meta.layer_nbytes for job in jobs))


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
        self._thread = threading.Thread(target=serially(self._run), name=f"kv-send-{address}", daemon=True)
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
        """Post one flight (these layers + the checksums owed), hashing its layers; confirm the one before."""
        owed, self._owed = self._owed, []
        if not jobs and not owed:
            return
        for job in jobs:
            if job.ready is not None:
                torch.cuda.current_stream(job.kv.device).wait_event(job.ready)
        flight = _Flight(jobs, owed + [_Owed(job, self._checksum_words(job)) for job in jobs if _read_hashed(job)])
        self._post(flight, flights)
        self._hash_upto(flight, len(jobs))  # what a failed post left unhashed
        self._owed = [o for o in flight.hashed if self._is_live(o.job.meta.request_id)]
        self._settle(flights, keep=1)

    def _hash_upto(self, flight: _Flight, num_layers: int) -> None:
        """Hash the flight's layers in order until its first `num_layers` are (each layer once)."""
        for job in flight.jobs[flight.num_hashed:num_layers]:
            if job.meta.checksum and not _read_hashed(job):
                flight.hashed.append(_Owed(job, self._checksum_words(job)))
            flight.num_hashed += 1

    def _checksum_words(self, job: Job) -> list[int]:
        """The words of a layer's CHECKSUM entry (`LayerHeader(Kind.CHECKSUM, ...).words()`), hashing the
        layer if the caller did not."""
        return checksum_words(job.meta.request_id, job.layer, layer_checksum(job), checksum_kind(job))

    def _post(self, flight: _Flight, flights: deque[_Flight]) -> bool:
        rid = (flight.jobs or [o.job for o in flight.owed])[0].meta.request_id
        flights.append(flight)
        try:
            link = self._ensure_link(rid)
            flight.works = [link.post_header(flight.words())]
            if flight.jobs:
                while flight.num_hashed < len(flight.jobs) and not link.ack_arrived():
                    self._hash_upto(flight, flight.num_hashed + 1)
                link.wait_ack(self._flight_remaining_s(flight))
                for first, end in flight.messages:
                    for job in flight.jobs[first:end]:
                        self._mark_sending(job.meta.request_id)
                    self._hash_upto(flight, end)  # while the messages before it drain from the socket
                    if end == len(flight.jobs) and link.early_headers:
                        self._post_checksums(flight, link, flights)
                    flight.works += link.post_payloads([_payload(flight.jobs[first:end])])
            return True
        except Exception as exc:
            self._recover(flights, exc)
            return False

    def _post_checksums(self, flight: _Flight, link: PairLink, flights: deque[_Flight]) -> None:
        """The flight's CHECKSUM entries in a header of their own, ahead of its last payload: the
        receiver has them when that payload lands and verifies it at once."""
        owed, flight.hashed = [o for o in flight.hashed if self._is_live(o.job.meta.request_id)], []
        if owed:
            sums = _Flight([], owed)
            flights.append(sums)
            sums.works = [link.post_header(sums.words())]

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
