"""The torch sender's flights, without a peer: which queued layers one header carries, and
the order its layers are hashed in (some while the header waits for its ack, the rest after
the payloads are posted)."""

from __future__ import annotations

import pytest
import torch

from splitserve.kvtransfer import TransferConfig, TransferMeta
from splitserve.kvtransfer import torch_sender
from splitserve.kvtransfer.checksum import ChecksumKind, checksum, layer_seed
from splitserve.kvtransfer.sender_base import Job, JobKind
from splitserve.kvtransfer.wire import MAX_ENTRIES, MAX_FLIGHT_LAYERS, as_bytes, request_hash


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


def test_a_flight_is_hashed_in_order_until_stopped_then_to_the_end(sender):
    meta = TransferMeta("r", 4, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32")
    flight = torch_sender._Flight(_jobs(meta), [])
    sender._hash(flight, stop=lambda: flight.num_hashed == 2)  # the ack arrived after two layers
    assert [o.entry.layer for o in flight.hashed] == [0, 1]
    sender._hash(flight)
    sender._hash(flight)  # each layer once
    expected = [(job.layer, checksum(ChecksumKind.XXH3_64, as_bytes(job.kv), layer_seed(request_hash("r"), job.layer)))
                for job in flight.jobs]
    assert [(o.entry.layer, o.entry.checksum) for o in flight.hashed] == expected
