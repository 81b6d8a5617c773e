"""KV transfer between real processes over loopback, once per backend (torch/gloo and grpc).

Each receiver and sender lives in its own spawned process (`tests.support.kv_peers`);
bit-identity is checked by comparing the crc32 of every layer the receiver wrote with the
crc32 the sender computed before sending.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict

import pytest

from splitserve.kvtransfer import TransferConfig, TransferMeta
from tests.support.kv_peers import PeerProcess

pytestmark = pytest.mark.slow

CONFIG = TransferConfig(timeout_s=6.0, connect_timeout_s=3.0)
_ids = itertools.count()


def meta(num_tokens: int, num_layers: int = 3, dtype: str = "float32", checksum: bool = False, **kw) -> TransferMeta:
    fields = dict(request_id=f"req-{next(_ids)}", num_layers=num_layers, num_tokens=num_tokens, num_kv_heads=2,
                  head_dim=16, dtype=dtype, checksum=checksum)
    return TransferMeta(**(fields | kw))


@pytest.fixture(scope="module", params=["torch", "grpc"])
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def receiver(backend):
    peer = PeerProcess("receiver", backend, CONFIG)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def sender(backend):
    peer = PeerProcess("sender", backend, CONFIG)
    yield peer
    peer.close()


@pytest.fixture
def fresh(backend):
    """Factory for extra peers that the test may kill; all are cleaned up."""
    peers = []

    def make(role: str) -> PeerProcess:
        peers.append(PeerProcess(role, backend, CONFIG))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()


def transfer(sender, receiver, m: TransferMeta, seed: int = 0, layer_delay_s: float = 0.0) -> str:
    address = receiver.call("address")
    receiver.call("expect", asdict(m))
    sender.call("send", address, asdict(m), seed, layer_delay_s)
    return address


def assert_delivered(sender, receiver, address: str, m: TransferMeta) -> None:
    assert receiver.call("wait", m.request_id, 10.0) == ("DONE", "")
    assert sender.call("wait", address, m.request_id, 10.0) == ("DONE", "")
    sent_crcs, _ = sender.call("result", m.request_id)
    received_crcs, _ = receiver.call("result", m.request_id)
    assert len(sent_crcs) == m.num_layers
    assert received_crcs == sent_crcs


def test_concurrent_requests_arrive_bit_identical(sender, receiver):
    metas = [meta(1), meta(37, dtype="bfloat16", checksum=True), meta(300, num_layers=5, dtype="float16"),
             meta(1500, num_layers=2, checksum=True, num_kv_heads=4, head_dim=64)]
    address = ""
    for seed, m in enumerate(metas):  # each send runs on its own thread in the sender process
        address = transfer(sender, receiver, m, seed)
    for m in metas:
        assert_delivered(sender, receiver, address, m)


def test_two_senders_one_receiver_and_one_sender_two_receivers(sender, receiver, fresh):
    second_sender, second_receiver = fresh("sender"), fresh("receiver")
    jobs = [(sender, receiver, meta(64)), (second_sender, receiver, meta(80)), (sender, second_receiver, meta(96))]
    addresses = [transfer(s, r, m, seed=i) for i, (s, r, m) in enumerate(jobs)]
    for (s, r, m), address in zip(jobs, addresses):
        assert_delivered(s, r, address, m)


def test_receiver_killed_mid_transfer_fails_sender_within_timeout(sender, receiver, fresh):
    doomed = fresh("receiver")
    m = meta(256, num_layers=8)
    doomed_address = transfer(sender, doomed, m, layer_delay_s=0.25)
    time.sleep(0.8)
    doomed.kill()
    start = time.monotonic()
    state, reason = sender.call("wait", doomed_address, m.request_id, CONFIG.timeout_s + 2)
    assert state == "FAILED" and reason
    assert time.monotonic() - start <= CONFIG.timeout_s + 1
    ok = meta(128)
    assert_delivered(sender, receiver, transfer(sender, receiver, ok), ok)


def test_sender_killed_mid_transfer_fails_receiver_then_fresh_sender_works(receiver, fresh):
    doomed = fresh("sender")
    m = meta(256, num_layers=8)
    transfer(doomed, receiver, m, layer_delay_s=0.25)
    time.sleep(0.8)
    doomed.kill()
    state, reason = receiver.call("wait", m.request_id, CONFIG.timeout_s + 1)
    assert state == "FAILED" and reason
    replacement, ok = fresh("sender"), meta(200)
    assert_delivered(replacement, receiver, transfer(replacement, receiver, ok), ok)


def test_sender_abort_reaches_the_receiver_before_its_timeout(sender, receiver):
    m = meta(64, num_layers=8)
    address = transfer(sender, receiver, m, layer_delay_s=0.2)
    time.sleep(0.5)
    start = time.monotonic()
    sender.call("abort", address, m.request_id)
    state, reason = receiver.call("wait", m.request_id, CONFIG.timeout_s)
    assert state == "FAILED" and ("sender aborted" in reason or "ended early" in reason)
    assert time.monotonic() - start < CONFIG.timeout_s / 2
    ok = meta(64)
    assert_delivered(sender, receiver, transfer(sender, receiver, ok), ok)


def test_header_that_does_not_match_the_reservation_fails_only_that_request(backend, sender, receiver):
    reserved = meta(100)
    address = receiver.call("address")
    receiver.call("expect", asdict(reserved))
    lying = TransferMeta(**(asdict(reserved) | {"num_tokens": 120}))
    sender.call("send", address, asdict(lying), 0)
    state, reason = receiver.call("wait", reserved.request_id, 5.0)
    assert state == "FAILED" and "120 tokens" in reason
    sent_state, _ = sender.call("wait", address, reserved.request_id, 5.0)
    # torch delivers the bytes (drained on the far side); grpc hears the rejection
    assert sent_state == ("DONE" if backend == "torch" else "FAILED")
    ok = meta(100)
    assert_delivered(sender, receiver, transfer(sender, receiver, ok), ok)


def test_unexpected_request_is_drained_and_receiver_keeps_working(backend, sender, receiver):
    address = receiver.call("address")
    stray = meta(50)
    sender.call("send", address, asdict(stray), 0)
    sent_state, reason = sender.call("wait", address, stray.request_id, 5.0)
    assert sent_state == ("DONE" if backend == "torch" else "FAILED")
    ok = meta(60)
    assert_delivered(sender, receiver, transfer(sender, receiver, ok), ok)


def test_garbage_on_a_pair_group_closes_only_that_group(backend, sender, receiver):
    if backend != "torch":
        pytest.skip("pair groups are the torch backend's")
    rogue = PeerProcess("sender", backend, CONFIG)
    try:
        rogue.call("send_garbage", receiver.call("address"))
    finally:
        rogue.close()
    ok = meta(70)
    assert_delivered(sender, receiver, transfer(sender, receiver, ok), ok)
