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

A request whose meta carries a tag (its decode node posted the receives of its first messages
ahead, wire v6) sends its payloads on that tag, right behind their header, with no ack to wait
for; its first messages are exactly the planned ones (`TransferMeta.posted`): their layers are
held until each message is whole, and copied into one buffer where they do not lie back to back;
none of its messages is larger than a receive posted ahead.
An aborted tagged request fills the receives posted ahead that it did not use (FILL entries).
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections import OrderedDict, deque
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
    encode_entries,
    encode_words,
    layer_words,
    request_hash,
    span_bytes,
)

MAX_FLIGHT_BYTES = 128 << 20  # bounds the receive buffers a flight makes the receiver hold (one layer at least)
REMEMBERED_TAGGED = 4096  # tagged requests whose planned messages sent are remembered (for an abort's fills)


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


def _planned(job: Job) -> tuple[int, int] | None:
    """[first, end) of the message posted ahead that a tagged request's layer travels in; None for
    a layer of an untagged request or past the messages posted ahead."""
    return None if job.meta.posted is None else job.meta.posted.message_of(job.layer)


def _join_limit(job: Job) -> int:
    """The bytes a message of `job`'s request may hold: JOIN_BYTES, and for a tagged request no
    more than a receive posted ahead holds (one that lands in such a receive must fit)."""
    return JOIN_BYTES if job.meta.posted is None else min(JOIN_BYTES, job.meta.posted.message_bytes)


def _joins(before: Job, job: Job, planned: list, i: int, nbytes: int) -> bool:
    """`job` (the i-th, after `before`, whose message has `nbytes` so far; `planned`: each job's
    `_planned`) travels in the message of `before`: the same planned message, or, neither
    planned, lying right after it in memory within JOIN_BYTES."""
    if planned[i] is not None or planned[i - 1] is not None:
        return planned[i] == planned[i - 1] and before.meta.request_id == job.meta.request_id
    return nbytes + job.meta.layer_nbytes <= _join_limit(job) and adjacent(before.kv, job.kv)


def _messages(jobs: list[Job]) -> list[tuple[int, int]]:
    """The jobs cut into payload messages, [first, end) each: a layer joins the message before it
    when `_joins` says so."""
    messages: list[tuple[int, int]] = []
    planned = [_planned(job) for job in jobs]
    nbytes = 0
    for i, job in enumerate(jobs):
        if messages and _joins(jobs[i - 1], job, planned, i, nbytes):
            messages[-1] = (messages[-1][0], i + 1)
            nbytes += job.meta.layer_nbytes
        else:
            messages.append((i, i + 1))
            nbytes = job.meta.layer_nbytes
    return messages


def _payload(jobs: list[Job]) -> torch.Tensor:
    """The bytes of one message: a layer's own, a span over layers lying back to back, or (a
    planned message whose layers do not) a copy of them into one buffer."""
    if len(jobs) == 1:
        return as_bytes(jobs[0].kv)
    if _planned(jobs[0]) is None or all(adjacent(before.kv, after.kv) for before, after in zip(jobs, jobs[1:])):
        return span_bytes(jobs[0].kv, sum(job.meta.layer_nbytes for job in jobs))
    return torch.cat([as_bytes(job.kv) for job in jobs])


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
        self._staged: dict[str, list[Job]] = {}  # a tagged request's layers of a planned message not whole yet
        self._planned_sent: OrderedDict[str, int] = OrderedDict()  # tagged request -> layers of planned messages sent
        self._fill: torch.Tensor | None = None  # zeros an abort's FILL payloads are sent from
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

    def _stage(self, jobs: list[Job]) -> list[Job]:
        """The jobs, less the layers of planned messages not whole yet (held in `_staged`), plus those
        held that these make whole."""
        for rid in [rid for rid in self._staged if not self._is_live(rid)]:
            del self._staged[rid]
        ready: list[Job] = []
        for job in jobs:
            planned = _planned(job)
            if planned is None:
                ready.append(job)
                continue
            rid = job.meta.request_id
            self._staged.setdefault(rid, []).append(job)
            if job.layer == planned[1] - 1:
                ready += self._staged.pop(rid)
                self._planned_sent[rid] = planned[1]
                self._planned_sent.move_to_end(rid)
                while len(self._planned_sent) > REMEMBERED_TAGGED:
                    self._planned_sent.popitem(last=False)
        return ready

    def _launch(self, jobs: list[Job], flights: deque[_Flight]) -> None:
        """Post one flight (these layers + the checksums owed), hashing its layers; confirm the one before."""
        jobs = self._stage(jobs)
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

    def _post(self, flight: _Flight, flights: deque[_Flight]) -> bool:
        rid = (flight.jobs or [o.job for o in flight.owed])[0].meta.request_id
        flights.append(flight)
        try:
            link = self._ensure_link(rid)
            flight.works = [link.post_header(flight.words())]
            ahead = [m for m in flight.messages if _planned(flight.jobs[m[0]]) is not None]  # receives waiting
            acked = [m for m in flight.messages if _planned(flight.jobs[m[0]]) is None]
            self._post_messages(flight, ahead, link, flights, last=not acked)
            if acked:  # the receiver acks once it posted their recvs
                while flight.num_hashed < len(flight.jobs) and not link.ack_arrived():
                    self._hash_upto(flight, flight.num_hashed + 1)
                link.wait_ack(self._flight_remaining_s(flight))
                self._post_messages(flight, acked, link, flights, last=True)
            return True
        except Exception as exc:
            self._recover(flights, exc)
            return False

    def _post_messages(self, flight: _Flight, messages: list[tuple[int, int]], link: PairLink,
                       flights: deque[_Flight], last: bool) -> None:
        """Post these payload messages of the flight, each layer hashed first (if the caller did not);
        `last`: they end the flight, so its checksums go ahead of the last one."""
        for i, (first, end) in enumerate(messages):
            for job in flight.jobs[first:end]:
                self._mark_sending(job.meta.request_id)
            self._hash_upto(flight, end)  # while the messages before it drain from the socket
            if last and i == len(messages) - 1 and link.early_headers:
                self._hash_upto(flight, len(flight.jobs))
                self._post_checksums(flight, link, flights)
            flight.works += link.post_payloads([_payload(flight.jobs[first:end])], flight.jobs[first].meta.tag)

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

    def _checksum_words(self, job: Job) -> list[int]:
        """The words of a layer's CHECKSUM entry (`LayerHeader(Kind.CHECKSUM, ...).words()`), hashing the
        layer if the caller did not."""
        return [int(Kind.CHECKSUM), request_hash(job.meta.request_id), job.layer, 0, 0, layer_checksum(job),
                int(checksum_kind(job)), 0, 0]

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
        """An ABORT entry, and for a tagged request the FILLs of the receives posted ahead it left unused."""
        rid = job.meta.request_id
        self._staged.pop(rid, None)
        fills = self._unused_planned(job.meta)
        if self._link is None:
            return  # nothing of it reached the peer on a live group; its timeout will fire
        entries = [LayerHeader(Kind.ABORT, request_hash(rid))] + [
            LayerHeader(Kind.FILL, request_hash(rid), first, job.meta.num_tokens, (end - first) * job.meta.layer_nbytes,
                        tag=job.meta.tag, ahead=True) for first, end in fills]
        try:
            works = [self._link.post_header(encode_entries(entries))]
            works += self._link.post_payloads([self._zeros(entry.nbytes) for entry in entries[1:]], job.meta.tag)
            self._link.wait_all(works, self.config.connect_timeout_s)
        except Exception:
            self._drop_link()

    def _unused_planned(self, meta) -> list[tuple[int, int]]:
        """The planned messages of a tagged request not sent (none for an untagged one)."""
        if meta.posted is None:
            return []
        sent = self._planned_sent.pop(meta.request_id, 0)
        return [(first, end) for first, end in meta.posted.messages() if first >= sent]

    def _zeros(self, nbytes: int) -> torch.Tensor:
        if self._fill is None or self._fill.numel() < nbytes:
            self._fill = torch.zeros(nbytes, dtype=torch.uint8, device=self.config.device)
        return self._fill[:nbytes]

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
