"""KV transfer: meta/config validation, the layer header, checksum, chunking, the registry."""

from __future__ import annotations

import pytest
import torch

from splitserve.kvtransfer import TransferConfig, TransferMeta, make_receiver, make_sender
from splitserve.kvtransfer.torch_pair import join_message, parse_join, split_address
from splitserve.kvtransfer.checksum import ChecksumKind
from splitserve.kvtransfer.wire import (
    ENTRY_WORDS,
    HEADER_WORDS,
    MAGIC,
    MAX_ENTRIES,
    Kind,
    LayerHeader,
    check_layer_tensor,
    chunk_ranges,
    decode_entries,
    encode_entries,
    checksum_words,
    encode_words,
    layer_words,
    request_hash,
)

META = TransferMeta("r1", num_layers=2, num_tokens=5, num_kv_heads=2, head_dim=4, dtype="bfloat16")


def test_meta_sizes():
    assert META.layer_shape == (2, 5, 2, 4)
    assert META.layer_nbytes == 2 * 5 * 2 * 4 * 2
    assert META.total_nbytes == 2 * META.layer_nbytes


@pytest.mark.parametrize("change, message", [
    ({"request_id": ""}, "request_id"),
    ({"request_id": "x" * 300}, "request_id"),
    ({"num_layers": 0}, "num_layers"),
    ({"num_tokens": True}, "num_tokens"),
    ({"head_dim": 1 << 30}, "head_dim"),
    ({"dtype": "int8"}, "bfloat16"),
    ({"checksum": 1}, "checksum"),
])
def test_meta_rejects(change, message):
    fields = dict(request_id="r", num_layers=1, num_tokens=1, num_kv_heads=1, head_dim=1, dtype="float32")
    with pytest.raises(ValueError, match=message):
        TransferMeta(**(fields | change))


@pytest.mark.parametrize("change", [{"timeout_s": 0}, {"device": "tpu"}, {"grpc_chunk_bytes": 10}, {"history": 0}])
def test_config_rejects(change):
    with pytest.raises(ValueError):
        TransferConfig(**change)


def test_checksum_is_on_by_default():
    assert META.checksum is True


def test_header_round_trip():
    layer = LayerHeader.for_layer(META, 1, ChecksumKind.XXH3_64)
    summed = LayerHeader(Kind.CHECKSUM, layer.request_hash, 0, checksum=-(2**63), checksum_kind=ChecksumKind.XXH3_64)
    words = encode_entries([layer, summed, LayerHeader(Kind.ABORT, 7)])
    assert words.shape == (HEADER_WORDS,) and words.dtype == torch.int64
    assert decode_entries(words) == [layer, summed, LayerHeader(Kind.ABORT, 7)]
    assert decode_entries(layer.encode()) == [layer]
    assert layer.request_hash == request_hash("r1") and 0 <= layer.request_hash < 1 << 63


def _words(*entries: list[int], count: int | None = None) -> list[int]:
    flat = [w for entry in entries for w in entry]
    words = [MAGIC, len(entries) if count is None else count] + flat
    return words + [0] * (HEADER_WORDS - len(words))


@pytest.mark.parametrize("words, message", [
    ([0] * HEADER_WORDS, "magic"),
    (_words([9, 1, 0, 1, 1, 0, 0]), "kind"),
    (_words([1, 1, 0, -5, 1, 0, 0]), "negative"),
    (_words([1, 1, 0, 1, 1, 0, 5]), "checksum kind"),
    (_words([1, 1, 0, 1, 1, 0, 0], count=0), "0 entries"),
    (_words([1, 1, 0, 1, 1, 0, 0], count=MAX_ENTRIES + 1), "entries"),
    ([MAGIC, 1, 1], "magic"),
])
def test_header_decode_rejects(words, message):
    with pytest.raises(ValueError, match=message):
        decode_entries(torch.tensor(words, dtype=torch.int64))


def test_a_senders_fast_layer_words_are_the_entrys():
    for kind in (Kind.LAYER, Kind.JOINED):
        entry = LayerHeader.for_layer(META, 1, ChecksumKind.MULSUM_64, kind=kind)
        assert layer_words(META, 1, ChecksumKind.MULSUM_64, kind) == entry.words()
        assert torch.equal(encode_words([entry.words()]), encode_entries([entry]))
        assert decode_entries(encode_words([entry.words(), entry.words()])) == [entry, entry]
    owed = LayerHeader(Kind.CHECKSUM, request_hash(META.request_id), 1, checksum=-5, checksum_kind=ChecksumKind.MULSUM_64)
    assert checksum_words(META.request_id, 1, -5, ChecksumKind.MULSUM_64) == owed.words()


def test_header_holds_at_most_max_entries():
    assert len(_words(*[[2, 1, 0, 0, 0, 0, 0]] * MAX_ENTRIES)) == HEADER_WORDS == 2 + MAX_ENTRIES * ENTRY_WORDS
    with pytest.raises(ValueError, match="entries"):
        encode_entries([LayerHeader(Kind.ABORT, 1)] * (MAX_ENTRIES + 1))


def test_header_mismatch_reasons():
    plain = TransferMeta(**{**META.__dict__, "checksum": False})
    good = LayerHeader.for_layer(plain, 0)
    assert good.mismatch(plain, 0) == ""
    assert "expected layer 1" in good.mismatch(plain, 1)
    wrong_size = LayerHeader(Kind.LAYER, good.request_hash, 0, 6, META.layer_nbytes)
    assert "6 tokens" in wrong_size.mismatch(plain, 0)
    assert "no checksum" in good.mismatch(META, 0)
    assert LayerHeader.for_layer(META, 0, ChecksumKind.XXH3_64).mismatch(META, 0) == ""


def test_chunk_ranges_cover_exactly():
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(8, 4) == [(0, 4), (4, 8)]
    assert chunk_ranges(0, 4) == []


def test_layer_tensor_checks():
    kv = torch.zeros(META.layer_shape, dtype=torch.bfloat16)
    check_layer_tensor(META, 1, kv)
    with pytest.raises(ValueError, match="out of range"):
        check_layer_tensor(META, 2, kv)
    with pytest.raises(ValueError, match="bfloat16"):
        check_layer_tensor(META, 0, kv.float())
    with pytest.raises(ValueError, match="contiguous"):
        check_layer_tensor(META, 0, kv.transpose(2, 3).contiguous().transpose(2, 3))


def test_join_messages_round_trip_and_reject_junk():
    key, message = join_message("abc123", 7, "cpu")
    assert parse_join(message) == (key, "abc123", "gloo")
    assert parse_join(join_message("abc", 1, "cuda:0")[1])[2] == "nccl"
    for junk in ["stop", "splitserve/kv/a b/1 gloo", "splitserve/kv/abc/1 mpi", key]:
        assert parse_join(junk) is None


def test_split_address():
    assert split_address("10.0.0.1:29500") == ("10.0.0.1", 29500)
    assert split_address("[::1]:80") == ("::1", 80)
    for bad in ["host", "host:0", ":80", "host:http"]:
        with pytest.raises(ValueError):
            split_address(bad)


def test_registry_lists_names():
    with pytest.raises(KeyError, match="grpc, loopback, torch"):
        make_sender("nccl", "h:1")
    with pytest.raises(KeyError, match="grpc, loopback, torch"):
        make_receiver("rdma")
