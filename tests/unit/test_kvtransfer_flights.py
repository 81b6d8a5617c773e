"""The torch sender's flights, without a peer: which queued layers one header carries, their
checksums (each layer hashed once, in order) and where they go (ahead of the last payload); and
a gloo pair link in one process: the receiver sees a header, the sender an ack, that has arrived
without waiting for it."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch.distributed import HashStore, PrefixStore, ProcessGroupGloo

from splitserve.kvtransfer import TransferConfig, TransferMeta, joined_layers
from splitserve.kvtransfer import torch_sender
from splitserve.kvtransfer.checksum import ChecksumKind, checksum, kind_for, layer_seed
from splitserve.kvtransfer.torch_pair import MAX_ACKS_OUT, PairLink, td
from splitserve.kvtransfer import sender_base
from splitserve.kvtransfer.sender_base import Job, JobKind
from splitserve.kvtransfer.wire import (MAX_ENTRIES, MAX_FLIGHT_LAYERS, Kind, LayerHeader, as_bytes, decode_entries,
                                        request_hash)


@pytest.fixture
def sender():
    # nothing connects: the thread waits for a LAYER job, which these tests never submit
    sender = torch_sender.TorchSender("127.0.0.1:9", TransferConfig())
    yield sender
    sender._held.clear()
    sender.close()


def _jobs(meta: TransferMeta) -> list[Job]:
    return [Job(JobKind.LAYER, meta, layer, torch.randn(meta.layer_shape)) for layer in range(meta.num_layers)]


def test_a_30_layer_request_fits_one_header_with_its_checksums():
    assert MAX_FLIGHT_LAYERS >= 30 and 2 * MAX_FLIGHT_LAYERS <= MAX_ENTRIES


def test_a_flight_takes_the_queued_layers_up_to_its_byte_budget(sender, monkeypatch):
    meta = TransferMeta("r", 5, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32")
    monkeypatch.setattr(torch_sender, "MAX_FLIGHT_BYTES", 3 * meta.layer_nbytes)
    sender.begin(meta)
    jobs = _jobs(meta)
    sender._held.extend(jobs[1:])
    assert [job.layer for job in sender._gather(jobs[0])] == [0, 1, 2]
    assert [job.layer for job in sender._held] == [3, 4]  # the next flight's


def test_a_flight_is_hashed_once_in_layer_order(sender):
    meta = TransferMeta("r", 4, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32")
    flight = torch_sender._Flight(_jobs(meta), [])
    sender._hash_upto(flight, 1)  # while the ack is on its way
    sender._hash_upto(flight, 1)
    assert flight.num_hashed == 1 and len(flight.hashed) == 1
    sender._hash_upto(flight, 4)  # each right before its payload is posted
    kind = kind_for(torch.device("cpu"))
    expected = [(job.layer, checksum(kind, as_bytes(job.kv), layer_seed(request_hash("r"), job.layer)), kind)
                for job in flight.jobs]
    entries = [LayerHeader.from_words(o.words) for o in flight.hashed]
    assert [(e.layer, e.checksum, e.checksum_kind) for e in entries] == expected


class _RecordingLink:
    """Stands in for a gloo PairLink: records what the sender posts, in order; the ack is there at once."""

    acks = early_headers = True

    def __init__(self) -> None:
        self.posted: list = []

    def post_header(self, words: torch.Tensor):
        from splitserve.kvtransfer.wire import decode_entries

        self.posted.append([(entry.kind, entry.layer) for entry in decode_entries(words)])
        return "header"

    def ack_arrived(self) -> bool:
        return True

    def wait_ack(self, timeout_s: float) -> None:
        pass

    def post_payloads(self, flats: list[torch.Tensor]) -> list:
        self.posted += [flat.numel() for flat in flats]
        return ["payload"]


def test_a_flights_checksums_go_ahead_of_its_last_payload(sender):
    meta = TransferMeta("r", 3, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32", checksum=True)
    sender.begin(meta)
    sender._link = link = _RecordingLink()
    flight, flights = torch_sender._Flight(_jobs(meta), []), torch_sender.deque()
    assert sender._post(flight, flights)
    n = meta.layer_nbytes
    assert link.posted == [[(Kind.LAYER, 0), (Kind.LAYER, 1), (Kind.LAYER, 2)], n, n,
                           [(Kind.CHECKSUM, 0), (Kind.CHECKSUM, 1), (Kind.CHECKSUM, 2)], n]
    assert [len(f.jobs) for f in flights] == [3, 0] and flight.hashed == []  # nothing left owed
    sender._link = None


def test_checksums_computed_by_the_read_ride_in_the_flights_own_header(sender, monkeypatch):
    meta = TransferMeta("r", 3, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32", checksum=True)
    monkeypatch.setattr(sender_base, "checksum", None)  # hashing here would raise
    sender.begin(meta)
    sender._link = link = _RecordingLink()
    jobs = [Job(JobKind.LAYER, meta, layer, torch.randn(meta.layer_shape), checksum=-5 - layer) for layer in range(3)]
    flights = torch_sender.deque()
    sender._launch(jobs, flights)
    n = meta.layer_nbytes
    assert link.posted == [[(Kind.LAYER, 0), (Kind.LAYER, 1), (Kind.LAYER, 2), (Kind.CHECKSUM, 0), (Kind.CHECKSUM, 1),
                            (Kind.CHECKSUM, 2)], n, n, n]  # no checksum header before the last payload
    entries = [e for e in decode_entries(flights[0].words()) if e.kind is Kind.CHECKSUM]
    assert [(e.checksum, e.checksum_kind) for e in entries] == [(-5, ChecksumKind.MULSUM_64), (-6, ChecksumKind.MULSUM_64),
                                                                (-7, ChecksumKind.MULSUM_64)]
    assert sender._owed == []
    sender._link = None


def test_layers_lying_back_to_back_leave_joined_up_to_join_bytes(sender, monkeypatch):
    meta = TransferMeta("r", 5, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32", checksum=True)
    n = meta.layer_nbytes
    layers = joined_layers(meta, join_bytes=2 * n)  # [0, 1] [2, 3] [4], each pair back to back
    sender.begin(meta)
    sender._link = link = _RecordingLink()
    jobs = [Job(JobKind.LAYER, meta, layer, kv.normal_()) for layer, kv in enumerate(layers)]
    assert sender._post(torch_sender._Flight(jobs, []), torch_sender.deque())
    assert link.posted == [[(Kind.LAYER, 0), (Kind.JOINED, 1), (Kind.LAYER, 2), (Kind.JOINED, 3), (Kind.LAYER, 4)],
                           2 * n, 2 * n, [(Kind.CHECKSUM, layer) for layer in range(5)], n]
    monkeypatch.setattr(torch_sender, "JOIN_BYTES", n)  # a message of one layer at most: none joined
    assert torch_sender._messages(jobs) == [(i, i + 1) for i in range(5)]
    sender._link = None


def test_layers_apart_in_memory_are_never_joined():
    meta = TransferMeta("r", 3, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32")
    assert torch_sender._messages(_jobs(meta)) == [(0, 1), (1, 2), (2, 3)]
    separate = [Job(JobKind.LAYER, meta, i, kv) for i, kv in enumerate(joined_layers(meta, join_bytes=1))]
    assert torch_sender._messages(separate) == [(0, 1), (1, 2), (2, 3)]  # one layer a buffer


@pytest.fixture
def links():
    """(sender link, receiver link) over a gloo pair group formed by two threads of this process."""
    store, groups = HashStore(), [None, None]

    def form(rank: int) -> None:
        groups[rank] = ProcessGroupGloo(PrefixStore("t", store), rank, 2, td(10))

    threads = [threading.Thread(target=form, args=(rank,)) for rank in (0, 1)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    return PairLink(groups[0], 0, "cpu"), PairLink(groups[1], 1, "cpu")


def _eventually(predicate, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < end:
        time.sleep(0.001)
    return predicate()


def test_the_receiver_sees_a_header_that_arrived_without_waiting_for_it(links):
    sender, receiver = links
    got = []
    first = threading.Thread(target=lambda: got.append(receiver.recv_header(5)))
    first.start()
    sender.post_header(LayerHeader(Kind.ABORT, 1).encode()).wait(td(5))
    first.join()
    assert got[0][0].request_hash == 1 and not receiver.header_arrived()
    sender.post_header(LayerHeader(Kind.ABORT, 2).encode()).wait(td(5))
    assert _eventually(receiver.header_arrived)  # gloo's is_completed() stays False until wait()
    assert receiver.recv_header(5)[0].request_hash == 2 and not receiver.header_arrived()



def test_the_sender_sees_an_ack_that_arrived_without_waiting_for_it(links):
    sender, receiver = links
    sender.post_header(LayerHeader(Kind.ABORT, 1).encode())
    assert not sender.ack_arrived()
    receiver.ack()
    assert _eventually(sender.ack_arrived)
    sender.wait_ack(5)
    assert not sender.ack_arrived()  # the next ack's buffer is zeroed


def test_the_receivers_pending_ack_sends_stay_bounded(links):
    sender, receiver = links
    sender._ack_in = sender._post_ack_recv()
    for _ in range(3 * MAX_ACKS_OUT):  # one flight each: the receiver acks, the sender reads the ack
        receiver.ack()
        sender.wait_ack(5)
    assert len(receiver._acks_out) <= MAX_ACKS_OUT


def test_the_receiver_reads_joined_entries_as_part_of_the_payload_before_them():
    from splitserve.kvtransfer import torch_receiver

    layer, joined, summed = (LayerHeader(kind, 1) for kind in (Kind.LAYER, Kind.JOINED, Kind.CHECKSUM))
    assert torch_receiver._messages([layer, joined, joined, summed, joined]) == [[layer, joined, joined], [summed],
                                                                                [joined]]
    receiver = torch_receiver.TorchReceiver(TransferConfig())
    try:
        with pytest.raises(ValueError, match="JOINED entry follows no layer"):
            receiver._post(None, joined, None)  # a header like that closes the pair
    finally:
        receiver.close()
