"""MULSUM_64, the layer checksum the native kernels compute while they copy a layer: the kernels
against the torch reference, the gather (prefill node) and scatter (decode node) against torch's
index_select / index_copy_, bad input refused before anything is copied, and the receiver using a
decode node's hashing write in place of hashing the layer itself."""

from __future__ import annotations

import pytest
import torch

from prefill_node.transfers import Transfers
from splitserve.engine import Engine, EngineConfig, native
from splitserve.kvtransfer import RecvState, SendState, TransferMeta, checksum_seed, make_sender
from splitserve.kvtransfer import receiver_base, sender_base
from splitserve.kvtransfer.checksum import ChecksumKind, checksum, mulsum, to_int64
from splitserve.kvtransfer.pool_copy import gather_checksummed, scatter_checksummed, scatter_layer
from splitserve.kvtransfer.loopback import LoopbackReceiver
from splitserve.kvtransfer.wire import Kind, LayerHeader, as_bytes

needs_kernels = pytest.mark.skipif(native.kv_ops() is None, reason="native CPU kernels unavailable")
MULSUM = ChecksumKind.MULSUM_64


def _bytes(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _pool(slots: int, heads: int, dim: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(slots, heads, dim, generator=gen).to(dtype) for _ in range(2))


@needs_kernels
@pytest.mark.parametrize("nbytes", [0, 1, 7, 8, 9, 63, 64, 65, 16391, 100_003])
def test_the_kernel_is_the_torch_reference(nbytes):
    flat = _bytes(nbytes, nbytes)
    for seed in (0, 1, 0x1234_5678_9ABC_DEF0, (1 << 64) - 1):
        assert native.kv_ops().mulsum(flat, to_int64(seed)) == mulsum(flat, seed), seed


# (kv_heads, head_dim, tokens): SmolLM2's rows, rows of 8 bytes, many chunks of 16 KB
SHAPES = [(3, 64, 180), (1, 2, 5), (2, 16, 1), (4, 8, 3000)]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,dim,n", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_gather_copies_like_index_select_and_hashes_what_it_wrote(dtype, heads, dim, n, threads):
    k, v = _pool(n + 37, heads, dim, dtype, seed=n)
    slots = torch.randperm(n + 37, generator=torch.Generator().manual_seed(1))[:n]
    out = torch.full((2, n, heads, dim), 7.0, dtype=dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        value = gather_checksummed(k, v, slots, out, seed=42)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, torch.stack((k[slots], v[slots])))
    assert value == mulsum(as_bytes(out), 42)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,dim,n", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_scatter_writes_like_index_copy_and_hashes_what_it_read(dtype, heads, dim, n, threads):
    """Rows of a multiple of 32 bytes at aligned slots go in with streaming stores, others with memcpy: the same."""
    kv = torch.randn(2, n, heads, dim, generator=torch.Generator().manual_seed(n)).to(dtype)
    slots = torch.randperm(n + 37, generator=torch.Generator().manual_seed(2))[:n]
    k, v = _pool(n + 37, heads, dim, dtype, seed=3)
    want_k, want_v = k.clone().index_copy_(0, slots, kv[0]), v.clone().index_copy_(0, slots, kv[1])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert scatter_checksummed(kv, k, v, slots, seed=5) == mulsum(as_bytes(kv), 5)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)


@pytest.mark.parametrize("kernels", [True, False])
def test_an_unhashed_write_is_index_copy_with_or_without_the_kernels(kernels, monkeypatch):
    if kernels and native.kv_ops() is None:
        pytest.skip("native CPU kernels unavailable")
    if not kernels:
        monkeypatch.setattr(native, "kv_ops", lambda: None)
    kv = torch.randn(2, 300, 3, 64)
    slots = torch.randperm(400, generator=torch.Generator().manual_seed(4))[:300]
    k, v = _pool(400, 3, 64, torch.float32, seed=5)
    want_k, want_v = k.clone().index_copy_(0, slots, kv[0]), v.clone().index_copy_(0, slots, kv[1])
    scatter_layer(kv, k, v, slots)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)


@needs_kernels
def test_a_slot_outside_the_pool_is_refused_before_anything_is_copied():
    k, v = _pool(8, 2, 4, torch.float32, seed=0)
    kv = torch.randn(2, 3, 2, 4)
    pool_before, kv_before = (k.clone(), v.clone()), kv.clone()
    for bad in ([1, 8, 2], [0, -1, 2]):
        with pytest.raises(RuntimeError, match="outside the pool"):
            scatter_checksummed(kv, k, v, torch.tensor(bad), seed=0)
        with pytest.raises(RuntimeError, match="outside the pool"):
            gather_checksummed(k, v, torch.tensor(bad), kv, seed=0)
        with pytest.raises(RuntimeError, match="outside the pool"):
            scatter_layer(kv, k, v, torch.tensor(bad))
    assert torch.equal(k, pool_before[0]) and torch.equal(v, pool_before[1]) and torch.equal(kv, kv_before)


def test_tensors_the_kernels_cannot_take_are_left_to_the_caller(monkeypatch):
    k, v = _pool(8, 2, 4, torch.float32, seed=0)
    out = torch.zeros(3, 2, 2, 4).transpose(0, 1)  # [2, 3, 2, 4], not contiguous
    assert gather_checksummed(k, v, torch.tensor([0, 1, 2]), out, seed=0) is None
    contiguous = torch.zeros(2, 3, 2, 4)
    assert gather_checksummed(k, v, torch.tensor([0, 1, 2], dtype=torch.int32), contiguous, seed=0) is None
    assert not out.any() and not contiguous.any()
    monkeypatch.setattr(native, "kv_ops", lambda: None)
    assert scatter_checksummed(torch.zeros(2, 3, 2, 4), k, v, torch.tensor([0, 1, 2]), seed=0) is None


def test_without_the_kernels_a_receiver_computes_the_same_value_with_torch(monkeypatch):
    flat = _bytes(5000)
    fused = checksum(MULSUM, flat, 9)
    monkeypatch.setattr(native, "kv_ops", lambda: None)
    assert checksum(MULSUM, flat, 9) == fused == mulsum(flat, 9)


# --- the receiver with a decode node's hashing write -------------------------------------------


def _meta(rid: str = "r1") -> TransferMeta:
    return TransferMeta(rid, 3, num_tokens=5, num_kv_heads=2, head_dim=8, dtype="float32")


class _Pool:
    """A decode node's pool in small: write_layer and write_hashed, counting which ran."""

    def __init__(self, meta: TransferMeta, value_override=None) -> None:
        self.k = [torch.zeros(16, meta.num_kv_heads, meta.head_dim) for _ in range(meta.num_layers)]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.slots = torch.arange(3, 3 + meta.num_tokens)
        self.calls = {"write_layer": 0, "write_hashed": 0}
        self.value_override = value_override

    def write_layer(self, layer: int, kv: torch.Tensor) -> None:
        self.calls["write_layer"] += 1
        self.k[layer].index_copy_(0, self.slots, kv[0])
        self.v[layer].index_copy_(0, self.slots, kv[1])

    def write_hashed(self, layer: int, kv: torch.Tensor, seed: int):
        self.calls["write_hashed"] += 1
        if self.value_override is not None:
            return self.value_override(self, layer, kv, seed)
        return scatter_checksummed(kv, self.k[layer], self.v[layer], self.slots, seed)


def _deliver(meta: TransferMeta, pool: _Pool, sent: list[torch.Tensor], arrived: list[torch.Tensor],
             kind: ChecksumKind = MULSUM) -> LoopbackReceiver:
    receiver = LoopbackReceiver()
    receiver.expect(meta, pool.write_layer, pool.write_hashed)
    for layer, kv in enumerate(arrived):
        header = LayerHeader.for_layer(meta, layer, kind)
        res = receiver._admit(header)
        if res is None:  # failed already
            break
        value = checksum(kind, as_bytes(sent[layer]), checksum_seed(meta.request_id, layer))
        receiver._checksum_entry(LayerHeader(Kind.CHECKSUM, header.request_hash, layer, checksum=value,
                                             checksum_kind=kind))
        receiver._deliver(res, header, kv)
    return receiver


def _layers(meta: TransferMeta) -> list[torch.Tensor]:
    return [torch.randn(meta.layer_shape, generator=torch.Generator().manual_seed(i)) for i in range(meta.num_layers)]


@needs_kernels
def test_mulsum_layers_are_written_by_the_hashing_write_and_verified_from_its_value():
    meta = _meta()
    sent, pool = _layers(meta), _Pool(meta)
    receiver = _deliver(meta, pool, sent, sent)
    assert receiver.poll("r1") is RecvState.DONE
    assert pool.calls == {"write_layer": 0, "write_hashed": 3}
    assert all(torch.equal(pool.k[i][pool.slots], kv[0]) for i, kv in enumerate(sent))


@needs_kernels
def test_a_flipped_byte_fails_the_transfer_after_the_hashing_write():
    meta = _meta()
    sent = _layers(meta)
    arrived = [kv.clone() for kv in sent]
    as_bytes(arrived[1])[13] ^= 0x04
    pool = _Pool(meta)
    receiver = _deliver(meta, pool, sent, arrived)
    assert receiver.poll("r1") is RecvState.FAILED
    assert receiver.info("r1").reason == "layer 1: checksum mismatch" and receiver.num_checksum_failures == 1


def test_a_write_that_could_not_hash_is_verified_by_the_receiver_and_other_kinds_use_write_layer():
    meta = _meta()
    sent = _layers(meta)
    unhashed = _Pool(meta, value_override=lambda pool, layer, kv, seed: pool.write_layer(layer, kv))
    assert _deliver(meta, unhashed, sent, sent).poll("r1") is RecvState.DONE
    assert unhashed.calls == {"write_layer": 3, "write_hashed": 3}
    xxh3 = _Pool(meta)
    assert _deliver(_meta(), xxh3, sent, sent, kind=ChecksumKind.XXH3_64).poll("r1") is RecvState.DONE
    assert xxh3.calls == {"write_layer": 3, "write_hashed": 0}


def test_a_hashing_write_that_raises_fails_the_transfer_with_its_reason():
    meta = _meta()
    sent = _layers(meta)

    def broken(pool, layer, kv, seed):
        raise RuntimeError("pool gone")

    receiver = _deliver(meta, _Pool(meta, value_override=broken), sent, sent)
    assert receiver.info("r1").reason == "layer 0: write_hashed raised RuntimeError: pool gone"


# --- a prefill node's reads -----------------------------------------------------------------


@needs_kernels
def test_a_prefill_node_sends_the_checksum_it_computed_while_reading_the_layer(tiny_model, monkeypatch):
    engine = Engine(tiny_model, EngineConfig(num_blocks=16, block_size=4))
    for t in engine.cache.k + engine.cache.v:
        t.normal_()
    transfers, receiver = Transfers(engine), LoopbackReceiver()
    cfg = engine.model_config
    meta = TransferMeta("p1", cfg.num_layers, 6, cfg.num_kv_heads, cfg.head_dim, "float32")
    pool = _Pool(meta)
    pool.k = [torch.zeros(16, cfg.num_kv_heads, cfg.head_dim) for _ in range(cfg.num_layers)]
    pool.v = [torch.zeros_like(t) for t in pool.k]
    pool.slots = torch.arange(6)
    receiver.expect(meta, pool.write_layer, pool.write_hashed)
    for module in (sender_base, receiver_base):  # neither end may hash a layer apart from its copy
        monkeypatch.setattr(module, "checksum", None)
    sender = make_sender("loopback", receiver.address)
    slots = torch.tensor([9, 2, 3, 14, 0, 5])
    with transfers.opened("p1", sender, num_tokens=6, layerwise=True):
        for layer in range(cfg.num_layers):
            transfers.send("p1", layer, slots)
        sender.finish("p1")
        assert sender.wait("p1", 5) is SendState.DONE
    assert receiver.poll("p1") is RecvState.DONE and pool.calls["write_layer"] == 0
    for layer in range(cfg.num_layers):
        assert torch.equal(pool.k[layer][:6], engine.cache.flat(layer)[0][slots])
        assert torch.equal(pool.v[layer][:6], engine.cache.flat(layer)[1][slots])
    sender.close()
