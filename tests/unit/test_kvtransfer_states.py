"""KV transfer state machines, driven through the in-process `loopback` backend and by hand."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from splitserve.kvtransfer import (
    KVReceiver,
    KVSender,
    RecvState,
    SendState,
    TransferConfig,
    TransferMeta,
    make_receiver,
    make_sender,
)
from splitserve.kvtransfer.loopback import LoopbackReceiver, LoopbackSender
from splitserve.kvtransfer.sender_base import Job, TrackedSender
from splitserve.kvtransfer.checksum import ChecksumKind
from splitserve.kvtransfer.wire import Kind, LayerHeader, request_hash

FAST = TransferConfig(timeout_s=0.3)


def meta(rid: str = "r1", num_layers: int = 3, checksum: bool = False) -> TransferMeta:
    return TransferMeta(rid, num_layers, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32", checksum=checksum)


def layers(m: TransferMeta) -> list[torch.Tensor]:
    return [torch.randn(m.layer_shape) for _ in range(m.num_layers)]


@pytest.fixture
def pair():
    receiver = make_receiver("loopback", TransferConfig())
    sender = make_sender("loopback", receiver.address, TransferConfig())
    yield sender, receiver
    sender.close()
    receiver.close()


class _Recorder:
    def __init__(self):
        self.layers: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, kv: torch.Tensor) -> None:
        self.layers[layer] = kv.clone()


def test_fakes_implement_the_interfaces():
    assert issubclass(LoopbackSender, KVSender) and issubclass(LoopbackReceiver, KVReceiver)


def test_full_transfer_reaches_done_on_both_sides(pair):
    sender, receiver = pair
    m, sink = meta(checksum=True), _Recorder()
    receiver.expect(m, sink)
    assert receiver.poll("r1") is RecvState.RESERVED
    sender.begin(m)
    assert sender.poll("r1") in (SendState.PENDING, SendState.SENDING)
    data = layers(m)
    for i, kv in enumerate(data):
        sender.send_layer("r1", i, kv)
    sender.finish("r1")
    assert sender.wait("r1", 5) is SendState.DONE
    assert receiver.poll("r1") is RecvState.DONE
    assert all(torch.equal(sink.layers[i], kv) for i, kv in enumerate(data))
    info = receiver.info("r1")
    assert (info.num_layers_done, info.num_bytes, info.reason) == (3, m.total_nbytes, "")


def test_sender_rejects_misuse(pair):
    sender, _ = pair
    m = meta()
    sender.begin(m)
    with pytest.raises(ValueError, match="already active"):
        sender.begin(m)
    with pytest.raises(ValueError, match="out of order"):
        sender.send_layer("r1", 1, layers(m)[0])
    with pytest.raises(ValueError, match="float32"):
        sender.send_layer("r1", 0, torch.zeros(m.layer_shape, dtype=torch.float16))
    with pytest.raises(ValueError, match="finish after 0 of 3"):
        sender.finish("r1")
    with pytest.raises(KeyError):
        sender.send_layer("nope", 0, layers(m)[0])
    with pytest.raises(KeyError):
        sender.poll("nope")
    sender.abort("nope")  # no-op


def test_abort_fails_both_sides_and_ignores_later_layers(pair):
    sender, receiver = pair
    m = meta()
    receiver.expect(m, _Recorder())
    sender.begin(m)
    sender.send_layer("r1", 0, layers(m)[0])
    sender.abort("r1")
    assert sender.poll("r1") is SendState.FAILED and sender.info("r1").reason == "aborted"
    sender.send_layer("r1", 1, layers(m)[1])  # a no-op once FAILED
    deadline = time.monotonic() + 2
    while receiver.poll("r1") is not RecvState.FAILED and time.monotonic() < deadline:
        time.sleep(0.005)
    assert receiver.info("r1").reason == "sender aborted"


def test_timeouts_fail_both_sides():
    receiver = LoopbackReceiver(FAST)
    sender = LoopbackSender(receiver.address, FAST)
    m = meta()
    receiver.expect(m, _Recorder())
    sender.begin(m)
    assert sender.wait("r1", 2) is SendState.FAILED
    assert "timed out" in sender.info("r1").reason
    assert receiver.poll("r1") is RecvState.FAILED and "timed out" in receiver.info("r1").reason
    sender.close()
    receiver.close()


def test_finished_transfers_are_forgotten_beyond_history():
    receiver = LoopbackReceiver(TransferConfig(history=2))
    for i in range(4):
        receiver.expect(meta(f"r{i}"), _Recorder())
        receiver.abort(f"r{i}")
    with pytest.raises(KeyError):
        receiver.poll("r0")
    assert receiver.poll("r3") is RecvState.FAILED


def _header(m: TransferMeta, layer_: int, **changes) -> LayerHeader:
    fields = dict(kind=Kind.LAYER, request_hash=request_hash(m.request_id), layer=layer_, num_tokens=m.num_tokens,
                  nbytes=m.layer_nbytes)
    return LayerHeader(**(fields | changes))


@pytest.mark.parametrize("changes, reason", [
    ({"layer": 1}, "expected layer 0"),
    ({"num_tokens": 9}, "9 tokens"),
    ({"nbytes": 12}, "12 bytes"),
])
def test_receiver_fails_reservation_on_a_lying_header(changes, reason):
    receiver = LoopbackReceiver()
    m = meta()
    receiver.expect(m, _Recorder())
    assert receiver._admit(_header(m, 0, **changes)) is None
    assert receiver.poll("r1") is RecvState.FAILED and reason in receiver.info("r1").reason
    assert receiver._admit(_header(m, 0)) is None  # final: later layers are drained
    assert receiver.num_discarded == 2


def test_receiver_drains_unknown_requests():
    receiver = LoopbackReceiver()
    assert receiver._admit(_header(meta("ghost"), 0)) is None
    assert receiver.num_discarded == 1


def test_checksum_mismatch_and_failing_write_layer_fail_the_reservation():
    receiver = LoopbackReceiver()
    m = meta(checksum=True)
    receiver.expect(m, _Recorder())
    header = _header(m, 0, checksum_kind=ChecksumKind.XXH3_64)
    res = receiver._admit(header)
    receiver._expect_checksum(res, 0, ChecksumKind.XXH3_64, 1)
    receiver._deliver(res, header, torch.zeros(m.layer_shape))
    assert "checksum mismatch" in receiver.info("r1").reason and receiver.num_checksum_failures == 1

    def broken(layer, kv):
        raise RuntimeError("pool gone")

    receiver.expect(meta("r2"), broken)
    m2 = meta("r2")
    receiver._deliver(receiver._admit(_header(m2, 0)), _header(m2, 0), torch.zeros(m2.layer_shape))
    assert "pool gone" in receiver.info("r2").reason


def test_abort_waits_for_a_running_write_layer():
    receiver = LoopbackReceiver()
    m = meta()
    entered, release, order = threading.Event(), threading.Event(), []

    def slow_write(layer, kv):
        entered.set()
        release.wait(5)
        order.append("write done")

    receiver.expect(m, slow_write)
    res = receiver._admit(_header(m, 0))
    writer = threading.Thread(target=receiver._deliver, args=(res, _header(m, 0), torch.zeros(m.layer_shape)))
    writer.start()
    entered.wait(5)
    aborter = threading.Thread(target=lambda: (receiver.abort("r1"), order.append("aborted")))
    aborter.start()
    time.sleep(0.05)
    assert order == []
    release.set()
    writer.join(5)
    aborter.join(5)
    assert order == ["write done", "aborted"] and receiver.poll("r1") is RecvState.FAILED


class _Silent(TrackedSender):
    """A transport that never moves anything (exercises the base class alone)."""

    def _submit(self, job: Job) -> None:
        pass

    def _shutdown(self) -> None:
        pass


def test_close_fails_active_transfers_and_refuses_new_ones():
    sender = _Silent(TransferConfig())
    sender.begin(meta())
    sender.close()
    assert sender.poll("r1") is SendState.FAILED and sender.info("r1").reason == "sender closed"
    with pytest.raises(RuntimeError):
        sender.begin(meta("r2"))


def test_wait_returns_current_state_on_its_own_timeout():
    sender = _Silent(TransferConfig())
    sender.begin(meta())
    start = time.monotonic()
    assert sender.wait("r1", 0.05) is SendState.PENDING
    assert time.monotonic() - start < 1


def test_when_ended_calls_back_once_at_the_end_or_at_once_if_already_ended(pair):
    sender, receiver = pair
    m, sink = meta(), _Recorder()
    receiver.expect(m, sink)
    seen = []
    receiver.when_ended("r1", seen.append)
    assert seen == []
    sender.begin(m)
    for layer, kv in enumerate(layers(m)):
        sender.send_layer("r1", layer, kv)
    sender.finish("r1")
    assert sender.wait("r1", 5) is SendState.DONE
    assert seen == [RecvState.DONE]
    receiver.when_ended("r1", seen.append)
    assert seen == [RecvState.DONE, RecvState.DONE]


def test_when_ended_reports_an_abort_and_unknown_requests_raise():
    receiver = make_receiver("loopback", FAST)
    receiver.expect(meta("r2"), _Recorder())
    seen = []
    receiver.when_ended("r2", seen.append)
    receiver.abort("r2")
    assert seen == [RecvState.FAILED]
    with pytest.raises(KeyError):
        receiver.when_ended("nobody", seen.append)
    receiver.close()
