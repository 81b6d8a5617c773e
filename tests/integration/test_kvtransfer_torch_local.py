"""The torch backend with both ends in this process (two threads, one gloo pair over loopback)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from splitserve.kvtransfer import RecvState, SendState, TransferConfig, TransferMeta, joined_layers
from splitserve.kvtransfer import torch_receiver
from splitserve.kvtransfer.torch_receiver import TorchReceiver
from splitserve.kvtransfer.torch_sender import TorchSender
from splitserve.node_api import PostedRecvs


def _transfer(sender: TorchSender, receiver: TorchReceiver, rid: str, num_layers: int = 2,
              joined: bool = False, ahead: bool = False, num_tokens: int = 8, head_dim: int = 4) -> PostedRecvs | None:
    """One checksummed transfer, checked byte for byte; `ahead`: the receiver is told the sender, so
    it may post receives ahead (they go in the sender's meta). Returns them (None: none posted)."""
    m = TransferMeta(rid, num_layers, num_tokens=num_tokens, num_kv_heads=2, head_dim=head_dim, dtype="float16",
                     checksum=True)
    got: list[torch.Tensor] = []
    posted = receiver.expect(m, lambda layer, kv: got.append(kv.clone()), sender=sender.instance if ahead else "")
    if joined:  # back to back in buffers of 3 layers: messages of 3, 3, ..., as a prefill node sends them
        sent = [kv.copy_(torch.randn(m.layer_shape)) for kv in joined_layers(m, join_bytes=3 * m.layer_nbytes)]
    else:
        sent = [torch.randn(m.layer_shape).half() for _ in range(m.num_layers)]
    m = dataclasses.replace(m, posted=posted)
    sender.begin(m)
    for layer, kv in enumerate(sent):
        sender.send_layer(rid, layer, kv)
    sender.finish(rid)
    assert sender.wait(rid, 10) is SendState.DONE, sender.info(rid)
    deadline = time.monotonic() + 5
    while receiver.poll(rid) is not RecvState.DONE and time.monotonic() < deadline:
        time.sleep(0.005)
    assert receiver.poll(rid) is RecvState.DONE, receiver.info(rid)
    assert all(torch.equal(a, b) for a, b in zip(got, sent, strict=True))
    return posted


def _send_ghost(sender: TorchSender) -> None:
    """Six layers back to back (one joined message) of a transfer the receiver does not expect."""
    ghost = TransferMeta("ghost", 6, num_tokens=8, num_kv_heads=2, head_dim=4, dtype="float16")
    sender.begin(ghost)
    for layer, kv in enumerate(joined_layers(ghost)):
        sender.send_layer("ghost", layer, kv.zero_())
    sender.finish("ghost")
    assert sender.wait("ghost", 10) is SendState.DONE  # handed over: the receiver drops it


@pytest.fixture
def pair(request):
    config = TransferConfig(timeout_s=5, connect_timeout_s=1, **getattr(request, "param", {}))
    receiver = TorchReceiver(config)
    sender = TorchSender(receiver.address, config)
    yield sender, receiver
    sender.close()
    receiver.close()


def test_idle_group_outlives_connect_timeout_and_is_reused(pair):
    sender, receiver = pair
    _transfer(sender, receiver, "a")
    time.sleep(1.5)
    _transfer(sender, receiver, "b")
    assert sender.num_groups_formed == 1 and receiver.num_pairs == 1


@pytest.mark.parametrize("pair", [{"idle_timeout_s": 0.5}], indirect=True)
def test_group_closed_for_idleness_is_formed_again(pair):
    sender, receiver = pair
    _transfer(sender, receiver, "a")
    time.sleep(1.0)
    _transfer(sender, receiver, "b")
    assert sender.num_groups_formed == 2


def test_sender_validates_layers_before_queueing(pair):
    sender, _ = pair
    sender.begin(TransferMeta("x", 1, 1, 1, 1, "float32"))
    with pytest.raises(ValueError, match="float32"):
        sender.send_layer("x", 0, torch.zeros(2, 1, 1, 1, dtype=torch.float64))


@pytest.mark.parametrize("pair", [{"max_layer_bytes": 4096}], indirect=True)
def test_oversized_unexpected_layer_closes_the_group_instead_of_draining(pair):
    sender, receiver = pair
    big = TransferMeta("big", 1, num_tokens=512, num_kv_heads=2, head_dim=4, dtype="float32")  # 16 KiB layer
    sender.begin(big)
    sender.send_layer("big", 0, torch.zeros(big.layer_shape))
    sender.finish("big")
    assert sender.wait("big", 10) is SendState.FAILED
    _transfer(sender, receiver, "after")
    assert sender.num_groups_formed == 2


def test_layers_lying_back_to_back_arrive_intact_in_joined_messages(pair):
    sender, receiver = pair
    _transfer(sender, receiver, "joined", num_layers=8, joined=True)
    _transfer(sender, receiver, "apart", num_layers=8)
    assert sender.num_groups_formed == 1 and receiver.num_discarded == 0


def test_a_joined_message_nobody_expects_is_dropped_and_the_pair_goes_on(pair):
    sender, receiver = pair
    _send_ghost(sender)
    _transfer(sender, receiver, "after", num_layers=6, joined=True)
    assert receiver.num_discarded == 6 and sender.num_groups_formed == 1


def test_a_dropped_joined_message_gives_its_buffer_back_to_the_pool(pair, monkeypatch):
    taken, given = [], []
    take, give = torch_receiver._BufferPool.take, torch_receiver._BufferPool.give
    monkeypatch.setattr(torch_receiver._BufferPool, "take", lambda self, n: taken.append(n) or take(self, n))
    monkeypatch.setattr(torch_receiver._BufferPool, "give",
                        lambda self, flat: given.append(flat.numel()) or give(self, flat))
    sender, receiver = pair
    _send_ghost(sender)
    _transfer(sender, receiver, "after", num_layers=6, joined=True)
    assert receiver.num_discarded == 6 and len(taken) == len(given) >= 2  # every pooled buffer came back


def _ahead_bytes(receiver: TorchReceiver) -> int:
    return sum(ahead.nbytes for ahead in receiver._ahead.values())


@pytest.mark.parametrize("joined", [False, True])
def test_a_transfer_into_receives_posted_ahead_arrives_intact_without_an_ack(pair, joined):
    sender, receiver = pair
    assert _transfer(sender, receiver, "first", ahead=True) is None  # no pair yet: nothing to post on
    # 8 layers in one planned message: apart (copied into one buffer) or in buffers of 3 (likewise)
    posted = _transfer(sender, receiver, "tagged", num_layers=8, joined=joined, ahead=True)
    assert posted.tag >= 16 and posted.messages() == [(0, 8)]
    assert _ahead_bytes(receiver) == 0 and sender.num_groups_formed == 1 and receiver.num_discarded == 0


def test_a_tagged_transfer_longer_than_its_receives_posted_ahead(pair):
    sender, receiver = pair
    _transfer(sender, receiver, "first")
    # 1 MiB layers, two a message: 4 messages (8 MiB) posted ahead, the last 2 posted when the header is in
    posted = _transfer(sender, receiver, "long", num_layers=12, ahead=True, num_tokens=2048, head_dim=64)
    assert posted.messages() == [(0, 2), (2, 4), (4, 6), (6, 8)] and _ahead_bytes(receiver) == 0
    _transfer(sender, receiver, "after", num_layers=3, joined=True)


def test_a_tag_the_receiver_did_not_post_is_received_all_the_same(pair):
    sender, receiver = pair
    _transfer(sender, receiver, "first")
    m = TransferMeta("stray", 4, num_tokens=8, num_kv_heads=2, head_dim=4, dtype="float16")
    got = []
    receiver.expect(m, lambda layer, kv: got.append(kv.clone()))  # no sender named: nothing posted ahead
    stray = PostedRecvs(12345, m.num_layers, m.layer_nbytes, 2, 2)  # as on a pair formed again since the reservation
    sender.begin(dataclasses.replace(m, posted=stray))
    for layer in range(4):
        sender.send_layer("stray", layer, torch.full(m.layer_shape, float(layer)).half())
    sender.finish("stray")
    assert sender.wait("stray", 10) is SendState.DONE
    _wait_recv(receiver, "stray", RecvState.DONE)
    assert [float(kv.flatten()[0]) for kv in got] == [0.0, 1.0, 2.0, 3.0]


def test_an_aborted_tagged_request_fills_its_receives_and_the_pair_goes_on(pair):
    sender, receiver = pair
    _transfer(sender, receiver, "first")
    m = TransferMeta("gone", 4, num_tokens=8, num_kv_heads=2, head_dim=4, dtype="float16")
    posted = receiver.expect(m, lambda layer, kv: None, sender=sender.instance)
    assert posted.messages() == [(0, 4)] and _ahead_bytes(receiver) == m.total_nbytes
    sender.begin(dataclasses.replace(m, posted=posted))
    sender.send_layer("gone", 0, torch.zeros(m.layer_shape).half())  # held: its planned message is not whole
    sender.abort("gone")
    _wait_recv(receiver, "gone", RecvState.FAILED)
    deadline = time.monotonic() + 5
    while _ahead_bytes(receiver) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _ahead_bytes(receiver) == 0 and receiver.info("gone").reason == "sender aborted"
    _transfer(sender, receiver, "after", num_layers=4, ahead=True)
    assert sender.num_groups_formed == 1


def test_receives_posted_ahead_for_ended_requests_close_the_pair_once_they_fill_its_budget(pair, monkeypatch):
    from splitserve.kvtransfer import posted_ahead, torch_receiver as receiver_module

    sender, receiver = pair
    _transfer(sender, receiver, "first")
    m = TransferMeta("x", 4, num_tokens=8, num_kv_heads=2, head_dim=4, dtype="float16")
    monkeypatch.setattr(receiver_module, "BUDGET_BYTES", 2 * m.total_nbytes)
    monkeypatch.setattr(posted_ahead, "BUDGET_BYTES", 2 * m.total_nbytes)
    for i in range(2):  # reserved and abandoned: their senders never come
        assert receiver.expect(dataclasses.replace(m, request_id=f"lost{i}"), lambda *a: None, sender=sender.instance)
        receiver.abort(f"lost{i}")
    assert receiver.expect(dataclasses.replace(m, request_id="full"), lambda *a: None, sender=sender.instance) is None
    deadline = time.monotonic() + 5
    while receiver.num_pairs and time.monotonic() < deadline:
        time.sleep(0.005)
    assert receiver.num_pairs == 0
    _transfer(sender, receiver, "after", num_layers=4)  # the sender forms the pair again
    assert sender.num_groups_formed == 2


def _wait_recv(receiver: TorchReceiver, rid: str, state: RecvState) -> None:
    deadline = time.monotonic() + 5
    while receiver.poll(rid) is not state and time.monotonic() < deadline:
        time.sleep(0.005)
    assert receiver.poll(rid) is state, receiver.info(rid)
