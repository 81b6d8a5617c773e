"""KV integrity: the checksum algorithms, and the receiver catching a flipped byte in any
layer, a truncated layer and reordered layers (checksum before or after the bytes arrive)."""

from __future__ import annotations

import pytest
import torch
import xxhash

from splitserve.engine import native
from splitserve.kvtransfer import RecvState, TransferMeta
from splitserve.kvtransfer.checksum import ChecksumKind, checksum, kind_for, layer_seed, to_int64, torch_words
from splitserve.kvtransfer.loopback import LoopbackReceiver
from splitserve.kvtransfer.wire import Kind, LayerHeader, as_bytes, request_hash

KINDS = [ChecksumKind.XXH3_64, ChecksumKind.TORCH_WORDS, ChecksumKind.MULSUM_64]


def _bytes(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_xxh3_is_the_library_hash_as_int64():
    flat = _bytes(1000)
    assert checksum(ChecksumKind.XXH3_64, flat, 5) == to_int64(xxhash.xxh3_64_intdigest(flat.numpy(), 5))


def test_cuda_tensors_hash_on_their_device_cpu_ones_fused_where_the_kernels_are(monkeypatch):
    assert kind_for(torch.device("cuda", 0)) is ChecksumKind.TORCH_WORDS
    want = ChecksumKind.XXH3_64 if native.kv_ops() is None else ChecksumKind.MULSUM_64
    assert kind_for(torch.device("cpu")) is want
    monkeypatch.setattr(native, "kv_ops", lambda: None)
    assert kind_for(torch.device("cpu")) is ChecksumKind.XXH3_64


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nbytes", [1, 7, 8, 4096, 4099])
def test_every_single_flipped_bit_position_changes_the_checksum(kind, nbytes):
    flat = _bytes(nbytes)
    base = checksum(kind, flat, 11)
    assert checksum(kind, flat.clone(), 11) == base
    for pos in sorted({0, nbytes // 2, nbytes - 1, min(nbytes - 1, 8)}):
        for bit in (0, 7):
            flipped = flat.clone()
            flipped[pos] ^= 1 << bit
            assert checksum(kind, flipped, 11) != base, (pos, bit)


@pytest.mark.parametrize("kind", KINDS)
def test_truncation_swaps_and_seed_change_the_checksum(kind):
    flat = _bytes(4096)
    base = checksum(kind, flat, 3)
    assert checksum(kind, flat[:4088], 3) != base
    assert checksum(kind, torch.cat([flat[:4088], torch.zeros(8, dtype=torch.uint8)]), 3) != base
    swapped = torch.cat([flat[8:16], flat[:8], flat[16:]])  # two int64 words exchanged
    assert checksum(kind, swapped, 3) != base
    assert checksum(kind, flat, 4) != base


def test_torch_words_is_deterministic_and_needs_no_host_copy_of_the_data():
    flat = _bytes(1 << 16)
    assert torch_words(flat, 9) == torch_words(flat.clone(), 9)
    assert torch_words(torch.zeros(64, dtype=torch.uint8), 0) != torch_words(torch.zeros(72, dtype=torch.uint8), 0)


def test_seeds_bind_the_request_and_the_layer():
    seeds = {layer_seed(request_hash(rid), layer) for rid in ("a", "b") for layer in range(4)}
    assert len(seeds) == 8


# --- the receiver: what a corrupted transfer looks like ----------------------------------------


def _meta(rid: str = "r1") -> TransferMeta:
    return TransferMeta(rid, 3, num_tokens=4, num_kv_heads=2, head_dim=8, dtype="float32")  # checksum on by default


def _layers(meta: TransferMeta) -> list[torch.Tensor]:
    return [torch.randn(meta.layer_shape, generator=torch.Generator().manual_seed(i)) for i in range(meta.num_layers)]


def _sender_sum(meta: TransferMeta, layer: int, kv: torch.Tensor) -> int:
    return checksum(ChecksumKind.XXH3_64, as_bytes(kv), layer_seed(request_hash(meta.request_id), layer))


def _receive(meta: TransferMeta, sent: list[torch.Tensor], arrived: list[torch.Tensor], sums_first: bool):
    """Drive a receiver as a backend does: the sender's checksums of `sent`, the bytes of `arrived`."""
    receiver, written = LoopbackReceiver(), {}
    receiver.expect(meta, lambda layer, kv: written.__setitem__(layer, kv.clone()))
    for layer, kv in enumerate(arrived):
        header = LayerHeader.for_layer(meta, layer, ChecksumKind.XXH3_64)
        res = receiver._admit(header)
        if res is None:
            break
        summed = LayerHeader(Kind.CHECKSUM, header.request_hash, layer, checksum=_sender_sum(meta, layer, sent[layer]),
                             checksum_kind=ChecksumKind.XXH3_64)
        if sums_first:
            receiver._checksum_entry(summed)
        receiver._deliver(res, header, kv)
        if not sums_first:
            receiver._checksum_entry(summed)
    return receiver, written


@pytest.mark.parametrize("sums_first", [True, False])
def test_intact_layers_are_done_only_once_verified(sums_first):
    meta = _meta()
    sent = _layers(meta)
    receiver, written = _receive(meta, sent, sent, sums_first)
    assert receiver.poll("r1") is RecvState.DONE and receiver.num_checksum_failures == 0
    assert all(torch.equal(written[i], kv) for i, kv in enumerate(sent))


def test_all_layers_written_but_a_checksum_missing_is_not_done():
    meta, receiver = _meta(), LoopbackReceiver()
    receiver.expect(meta, lambda layer, kv: None)
    for layer, kv in enumerate(_layers(meta)):
        header = LayerHeader.for_layer(meta, layer, ChecksumKind.XXH3_64)
        receiver._deliver(receiver._admit(header), header, kv)
    assert receiver.poll("r1") is RecvState.RECEIVING


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("sums_first", [True, False])
def test_one_flipped_byte_in_any_layer_fails_the_request(layer, sums_first):
    meta = _meta()
    sent = _layers(meta)
    arrived = [kv.clone() for kv in sent]
    as_bytes(arrived[layer])[37] ^= 0x10
    receiver, _ = _receive(meta, sent, arrived, sums_first)
    assert receiver.poll("r1") is RecvState.FAILED
    assert receiver.info("r1").reason == f"layer {layer}: checksum mismatch"
    assert receiver.num_checksum_failures == 1


def test_a_truncated_layer_fails_the_request():
    meta = _meta()
    sent = _layers(meta)
    arrived = [kv.clone() for kv in sent]
    as_bytes(arrived[1])[-24:] = 0  # the tail never came: the buffer keeps what it held
    receiver, _ = _receive(meta, sent, arrived, sums_first=False)
    assert receiver.info("r1").reason == "layer 1: checksum mismatch"
    short = LayerHeader(Kind.LAYER, request_hash("r2"), 0, meta.num_tokens, meta.layer_nbytes - 24,
                        checksum_kind=ChecksumKind.XXH3_64)
    receiver.expect(_meta("r2"), lambda layer, kv: None)
    assert receiver._admit(short) is None and "bytes" in receiver.info("r2").reason


def test_reordered_layers_fail_the_request():
    meta = _meta()
    sent = _layers(meta)
    receiver, written = _receive(meta, sent, [sent[1], sent[0], sent[2]], sums_first=True)
    assert receiver.info("r1").reason == "layer 0: checksum mismatch" and written == {}


def test_same_bytes_in_another_position_or_request_do_not_verify():
    meta = _meta()
    kv = _layers(meta)[0]
    assert _sender_sum(meta, 0, kv) != _sender_sum(meta, 1, kv) != _sender_sum(_meta("r2"), 1, kv)
