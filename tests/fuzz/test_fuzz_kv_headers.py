"""KV transfer headers that lie about sizes, layers, token counts, checksums and request ids.

gRPC backend: PushKV streams to the real decode node of the fuzz cluster, against a real
reservation: each lie is refused with a status code, the reservation it names is failed and
its blocks freed, and the receiver then takes a valid transfer. Torch backend: in this
process, a raw pair group (as a sender forms one) sends lying headers, each followed by
exactly the payload it claims (gloo aborts the process on a size mismatch, so that one lie
cannot be told): the named reservation fails, others stay untouched, an oversized claim or a
header that is not ours closes the group, and a real sender's transfer still arrives.
"""

from __future__ import annotations

import os

import grpc
import pytest
import torch
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from splitserve.api.v1 import common_pb2, kvtransfer_pb2, node_pb2
from splitserve.kvtransfer import RecvState, SendState, TransferConfig, TransferMeta, make_sender
from splitserve.kvtransfer import torch_pair as tp
from splitserve.kvtransfer.torch_receiver import TorchReceiver
from splitserve.kvtransfer.torch_sender import TorchSender
from splitserve.kvtransfer.checksum import ChecksumKind, layer_seed
from splitserve.kvtransfer.wire import HEADER_WORDS, MAGIC, Kind, LayerHeader, decode_entries, request_hash
from tests.fuzz.harness import NODE, call, fuzz_settings, node, push_kv
from tests.support.cluster import node_stats, used_blocks_settle_to_zero, wait_until

NUM_TOKENS = 5
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.DATA_LOSS}


def _decode_meta(cluster, rid: str) -> TransferMeta:
    """The meta the decode node builds for a reservation (tiny model, float32, --kv-checksum)."""
    stats = node_stats(node(cluster, "decode").address)
    assert stats.transport == "grpc"
    return TransferMeta(rid, 2, NUM_TOKENS, 2, 16, "float32", checksum=True)


def _reserve(address: str, rid: str) -> None:
    request = node_pb2.ReserveRequest(request_id=rid, num_prompt_tokens=NUM_TOKENS, prefill_node_id="fuzz")
    assert call(address, NODE + "Reserve", request.SerializeToString()).code == grpc.StatusCode.OK


def _abort(address: str, rid: str) -> None:
    call(address, NODE + "Abort", common_pb2.AbortRequest(request_id=rid).SerializeToString())


@st.composite
def lying_chunks(draw, rid: str, nbytes: int) -> list[kvtransfer_pb2.KVChunk]:
    """One to three chunks of layer 0, each with one or two fields that lie."""
    fields = {
        "request_id": st.sampled_from([rid, rid + "x", "", "other"]),
        "layer": st.sampled_from([0, 1, 2, 2**32 - 1]),
        "num_tokens": st.sampled_from([NUM_TOKENS, NUM_TOKENS - 1, NUM_TOKENS + 1, 0, 2**32 - 1]),
        "layer_nbytes": st.sampled_from([nbytes, nbytes - 1, nbytes + 1, 0, 2**40, 2**64 - 1]),
        "offset": st.sampled_from([0, nbytes // 2, nbytes, 2**64 - 1]),
        "data": st.sampled_from([0, 1, nbytes // 2, nbytes, nbytes + 8]).map(os.urandom),
        "checksum": st.sampled_from([None, 0, 2**64 - 1]),
        "checksum_kind": st.sampled_from([0, 1, 2, 7]),
    }
    chunks = []
    for _ in range(draw(st.integers(1, 3))):
        values = {"request_id": rid, "layer": 0, "num_tokens": NUM_TOKENS, "layer_nbytes": nbytes, "offset": 0,
                  "data": os.urandom(nbytes), "checksum": None, "checksum_kind": int(ChecksumKind.XXH3_64)}
        for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2, unique=True)):
            values[name] = draw(fields[name])
        if values["checksum"] is None:
            seed = layer_seed(request_hash(values["request_id"]), values["layer"])
            values["checksum"] = xxhash.xxh3_64_intdigest(values["data"], seed)
        chunks.append(kvtransfer_pb2.KVChunk(**values))
    return chunks


@pytest.mark.slow
@fuzz_settings(max_examples=30)
@given(data=st.data())
def test_grpc_lies_are_refused_and_free_the_reservation(cluster, data):
    decode = node(cluster, "decode").address
    rid = f"kv-fuzz-{os.urandom(4).hex()}"
    meta = _decode_meta(cluster, rid)
    chunks = data.draw(lying_chunks(rid, meta.layer_nbytes))  # before reserving: a draw may end the example
    _reserve(decode, rid)
    try:
        outcome = push_kv(decode, [c.SerializeToString() for c in chunks])
        assert outcome.code in REFUSALS, outcome  # a lie in every chunk stream: never OK, never UNKNOWN
        if chunks[0].request_id == rid and chunks[0].offset == 0:  # the receiver took the stream as this request's
            assert used_blocks_settle_to_zero(decode, 5.0), ("a refused transfer kept its blocks", outcome)
    finally:
        _abort(decode, rid)
    assert used_blocks_settle_to_zero(decode, 5.0)


@pytest.mark.slow
def test_grpc_receiver_takes_a_valid_transfer_after_the_lies(cluster):
    decode = node(cluster, "decode").address
    rid = f"kv-valid-{os.urandom(4).hex()}"
    meta = _decode_meta(cluster, rid)
    _reserve(decode, rid)
    sender = make_sender("grpc", decode, TransferConfig(timeout_s=10))
    try:
        sender.begin(meta)
        for layer in range(meta.num_layers):
            sender.send_layer(rid, layer, torch.randn(meta.layer_shape))
        sender.finish(rid)
        assert sender.wait(rid, 10) is SendState.DONE, sender.info(rid)
    finally:
        sender.close()
        _abort(decode, rid)
    assert used_blocks_settle_to_zero(decode, 5.0)


# --- torch backend, both ends in this process --------------------------------------------------

TORCH_CONFIG = TransferConfig(timeout_s=5, connect_timeout_s=5, max_layer_bytes=1 << 16)


class RawPeer:
    """A sender-side pair group formed by hand, so that headers can say anything."""

    def __init__(self, address: str):
        self.address, self.instance, self.generation = address, "fuzz" + os.urandom(4).hex(), 0
        self.link: tp.PairLink | None = None

    def _connect(self) -> tp.PairLink:
        self.generation += 1
        store = tp.connect_store(self.address, TORCH_CONFIG.connect_timeout_s)
        pair_key, message = tp.join_message(self.instance, self.generation, "cpu")
        store.queue_push(tp.JOIN_QUEUE, message)
        group = tp.make_group(store, pair_key, tp.SENDER_RANK, "cpu", TORCH_CONFIG.connect_timeout_s, 60.0)
        return tp.PairLink(group, tp.SENDER_RANK, "cpu")

    def send(self, words: torch.Tensor, payload_bytes: int | None) -> None:
        """A header (int64 words), then payload_bytes random bytes as the receiver will expect them."""
        self.link = self.link or self._connect()
        works = [self.link.group.send([words], self.link.peer, tp.HEADER_TAG)]
        if payload_bytes is not None:
            flat = torch.randint(0, 255, (payload_bytes,), dtype=torch.uint8)
            works += [self.link.group.send([flat[lo:hi]], self.link.peer, tp.PAYLOAD_TAG)
                      for lo, hi in tp.chunk_ranges(payload_bytes)]
        try:
            self.link.wait_all(works, 5.0)
        except Exception:  # the receiver closed the group (a header it would not take)
            self.broken()

    def broken(self) -> None:
        if self.link is not None:
            self.link.close()
        self.link = None


@pytest.fixture(scope="module")
def torch_receiver():
    receiver = TorchReceiver(TORCH_CONFIG)
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def raw_peer(torch_receiver):
    peer = RawPeer(torch_receiver.address)
    yield peer
    peer.broken()


@st.composite
def lying_headers(draw, meta: TransferMeta) -> LayerHeader:
    """A LAYER header for meta's request with one to three fields that (may) lie."""
    fields = {"request_hash": st.sampled_from([request_hash(meta.request_id), 0, 2**63 - 1]),
              "layer": st.sampled_from([0, 1, meta.num_layers, 2**62]),
              "num_tokens": st.sampled_from([meta.num_tokens, meta.num_tokens + 1, 0, 2**40]),
              "nbytes": st.sampled_from([meta.layer_nbytes, meta.layer_nbytes - 4, meta.layer_nbytes + 4, 0, 4096,
                                         TORCH_CONFIG.max_layer_bytes + 1, 2**40]),
              "checksum_kind": st.sampled_from(list(ChecksumKind))}
    values = {"request_hash": request_hash(meta.request_id), "layer": 0, "num_tokens": meta.num_tokens,
              "nbytes": meta.layer_nbytes, "checksum_kind": ChecksumKind.NONE}
    for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)):
        values[name] = draw(fields[name])
    return LayerHeader(Kind.LAYER, **values)


def _settled(receiver: TorchReceiver, rid: str, discarded: int, peer: RawPeer) -> bool:
    return receiver.poll(rid) is not RecvState.RESERVED or receiver.num_discarded > discarded or peer.link is None


@fuzz_settings(max_examples=30)
@given(data=st.data())
def test_torch_lies_fail_only_the_named_reservation(torch_receiver, raw_peer, data):
    rid = f"t-{os.urandom(4).hex()}"
    meta = TransferMeta(rid, 2, 8, 2, 4, "float32", checksum=data.draw(st.booleans()))
    header = data.draw(lying_headers(meta))
    torch_receiver.expect(meta, lambda layer, kv: None)
    discarded = torch_receiver.num_discarded
    oversized = header.nbytes > TORCH_CONFIG.max_layer_bytes
    raw_peer.send(header.encode(), None if oversized else header.nbytes)
    assert wait_until(lambda: _settled(torch_receiver, rid, discarded, raw_peer), 5.0)
    state, reason = torch_receiver.poll(rid), header.mismatch(meta, 0)
    if header.request_hash != request_hash(rid):
        assert state is RecvState.RESERVED  # someone else's header: drained (or the group closed), ours untouched
    elif reason:
        assert state is RecvState.FAILED and torch_receiver.info(rid).reason == reason
    else:  # nothing lied after all: layer 0 taken (a checksum that is wrong fails it on delivery)
        assert state in (RecvState.RECEIVING, RecvState.FAILED)
    if oversized:
        assert wait_until(lambda: torch_receiver.num_pairs == 0, 5.0)
        raw_peer.broken()
    torch_receiver.abort(rid)


@fuzz_settings(max_examples=20)
@given(words=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=HEADER_WORDS, max_size=HEADER_WORDS),
       magic=st.booleans())
def test_header_decoding_refuses_what_is_not_a_header(words, magic):
    if magic:
        words[0] = MAGIC
    try:
        entries = decode_entries(torch.tensor(words, dtype=torch.int64))
    except ValueError:
        return
    assert words[0] == MAGIC and all(min(e.request_hash, e.layer, e.num_tokens, e.nbytes) >= 0 for e in entries)


def test_a_header_that_is_not_ours_closes_only_its_group(torch_receiver, raw_peer):
    raw_peer.send(torch.arange(HEADER_WORDS, dtype=torch.int64), None)
    assert wait_until(lambda: torch_receiver.num_pairs == 0, 5.0)
    raw_peer.broken()


def test_torch_receiver_takes_a_valid_transfer_after_the_lies(torch_receiver):
    meta = TransferMeta(f"ok-{os.urandom(4).hex()}", 2, 8, 2, 4, "float32", checksum=True)
    got = []
    torch_receiver.expect(meta, lambda layer, kv: got.append(kv.clone()))
    sent = [torch.randn(meta.layer_shape) for _ in range(meta.num_layers)]
    sender = TorchSender(torch_receiver.address, TORCH_CONFIG)
    try:
        sender.begin(meta)
        for layer, kv in enumerate(sent):
            sender.send_layer(meta.request_id, layer, kv)
        sender.finish(meta.request_id)
        assert sender.wait(meta.request_id, 10) is SendState.DONE, sender.info(meta.request_id)
        assert wait_until(lambda: torch_receiver.poll(meta.request_id) is RecvState.DONE, 5.0)
    finally:
        sender.close()
    assert all(torch.equal(a, b) for a, b in zip(got, sent, strict=True))
