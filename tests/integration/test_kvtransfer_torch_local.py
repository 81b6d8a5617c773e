"""The torch backend with both ends in this process (two threads, one gloo pair over loopback)."""

from __future__ import annotations

import time

import pytest
import torch

from splitserve.kvtransfer import RecvState, SendState, TransferConfig, TransferMeta, joined_layers
from splitserve.kvtransfer import torch_receiver
from splitserve.kvtransfer.torch_receiver import TorchReceiver
from splitserve.kvtransfer.torch_sender import TorchSender


def _transfer(sender: TorchSender, receiver: TorchReceiver, rid: str, num_layers: int = 2,
              joined: bool = False) -> list[torch.Tensor]:
    m = TransferMeta(rid, num_layers, num_tokens=8, num_kv_heads=2, head_dim=4, dtype="float16", checksum=True)
    got: list[torch.Tensor] = []
    receiver.expect(m, lambda layer, kv: got.append(kv.clone()))
    if joined:  # back to back in buffers of 3 layers: messages of 3, 3, ..., as a prefill node sends them
        sent = [kv.copy_(torch.randn(m.layer_shape)) for kv in joined_layers(m, join_bytes=3 * m.layer_nbytes)]
    else:
        sent = [torch.randn(m.layer_shape).half() for _ in range(m.num_layers)]
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
    return got


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
