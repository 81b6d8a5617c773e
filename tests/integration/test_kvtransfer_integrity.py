"""KV integrity through real gloo processes: a wire that flips a byte, truncates a layer or
reorders layers is caught by the receiver's checksum (the request FAILS, the failure is
counted), and the same pair then carries an intact transfer."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import pytest

from splitserve.kvtransfer import TransferConfig, TransferMeta
from tests.support.kv_peers import PeerProcess

pytestmark = pytest.mark.slow

CONFIG = TransferConfig(timeout_s=6.0, connect_timeout_s=3.0)
_ids = itertools.count()


def _meta() -> TransferMeta:
    return TransferMeta(f"int-{next(_ids)}", 4, num_tokens=33, num_kv_heads=2, head_dim=16, dtype="bfloat16")


@pytest.fixture(scope="module")
def peers():
    receiver, sender = PeerProcess("receiver", "torch", CONFIG), PeerProcess("sender", "torch", CONFIG)
    yield receiver, sender
    sender.close()
    receiver.close()


@pytest.mark.parametrize("fault, bad_layer", [("flip", 2), ("truncate", 2), ("reorder", 0)])
def test_a_corrupted_wire_fails_the_request_and_counts(peers, fault, bad_layer):
    receiver, sender = peers
    address, meta = receiver.call("address"), _meta()
    assert meta.checksum  # on by default
    failures = receiver.call("stats")["num_checksum_failures"]
    receiver.call("expect", asdict(meta))
    sender.call("send_corrupted", address, asdict(meta), 7, fault)
    state, reason = receiver.call("wait", meta.request_id, 10.0)
    assert (state, reason) == ("FAILED", f"layer {bad_layer}: checksum mismatch")
    assert receiver.call("stats")["num_checksum_failures"] == failures + 1


def test_intact_transfer_after_the_faults(peers):
    receiver, sender = peers
    address, meta = receiver.call("address"), _meta()
    receiver.call("expect", asdict(meta))
    sender.call("send", address, asdict(meta), 7)
    assert receiver.call("wait", meta.request_id, 10.0) == ("DONE", "")
    sent, _ = sender.call("result", meta.request_id)
    received, _ = receiver.call("result", meta.request_id)
    assert received == sent and len(sent) == meta.num_layers
