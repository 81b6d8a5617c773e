"""KV integrity through real processes: a gloo wire that flips a byte, truncates a layer or
reorders layers is caught by the receiver's checksum, computed by the receiver or by a decode
node's write into its pool (the request FAILS, the failure is counted), and the same pair then
carries an intact transfer; over gRPC a flipped byte comes
back to the sender as DATA_LOSS (the prefill node fails the request: the router re-dispatches)."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import pytest

import torch

from splitserve.kvtransfer import SendState, TransferConfig, TransferMeta
from splitserve.kvtransfer.grpc_sender import GrpcSender
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


@pytest.mark.parametrize("into_pool", [False, True], ids=["receiver-hashes", "pool-write-hashes"])
@pytest.mark.parametrize("fault, bad_layer", [("flip", 2), ("truncate", 2), ("reorder", 0)])
def test_a_corrupted_wire_fails_the_request_and_counts(peers, fault, bad_layer, into_pool):
    receiver, sender = peers
    address, meta = receiver.call("address"), _meta()
    assert meta.checksum  # on by default
    failures = receiver.call("stats")["num_checksum_failures"]
    receiver.call("expect", asdict(meta), into_pool)
    sender.call("send_corrupted", address, asdict(meta), 7, fault)
    state, reason = receiver.call("wait", meta.request_id, 10.0)
    assert (state, reason) == ("FAILED", f"layer {bad_layer}: checksum mismatch")
    assert receiver.call("stats")["num_checksum_failures"] == failures + 1


@pytest.mark.parametrize("into_pool", [False, True], ids=["receiver-hashes", "pool-write-hashes"])
def test_intact_transfer_after_the_faults(peers, into_pool):
    receiver, sender = peers
    address, meta = receiver.call("address"), _meta()
    receiver.call("expect", asdict(meta), into_pool)
    sender.call("send", address, asdict(meta), 7)
    assert receiver.call("wait", meta.request_id, 10.0) == ("DONE", "")
    sent, _ = sender.call("result", meta.request_id)
    received, _ = receiver.call("result", meta.request_id)
    assert received == sent and len(sent) == meta.num_layers


class _FlippingGrpcSender(GrpcSender):
    """Flips one byte of layer 1 in the message after the layer was hashed (a faulty wire)."""

    def _layer_chunks(self, meta, job):
        for chunk in super()._layer_chunks(meta, job):
            if job.layer == 1 and chunk.offset == 0:
                data = bytearray(chunk.data)
                data[5] ^= 0x01
                chunk.data = bytes(data)
            yield chunk


def test_grpc_checksum_mismatch_is_data_loss_for_the_sender():
    receiver = PeerProcess("receiver", "grpc", CONFIG)
    sender = _FlippingGrpcSender(receiver.call("address"), CONFIG)
    try:
        meta = _meta()
        receiver.call("expect", asdict(meta))
        sender.begin(meta)
        for layer in range(meta.num_layers):
            sender.send_layer(meta.request_id, layer, torch.randn(meta.layer_shape).to(torch.bfloat16))
        sender.finish(meta.request_id)
        assert sender.wait(meta.request_id, 10.0) is SendState.FAILED
        assert sender.info(meta.request_id).reason == "DATA_LOSS: layer 1: checksum mismatch"
        assert receiver.call("wait", meta.request_id, 5.0) == ("FAILED", "layer 1: checksum mismatch")
        assert receiver.call("stats")["num_checksum_failures"] == 1
    finally:
        sender.close()
        receiver.close()
