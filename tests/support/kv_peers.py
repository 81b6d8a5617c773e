"""Senders and receivers in child processes, driven over a pipe: for tests and benchmarks.

`PeerProcess("receiver", backend, config, record_crc=True, copy_layers=True)` hosts one receiver; `PeerProcess("sender", ...)`
hosts one sender per destination address. Payloads are made from a seed on the sending side
(`layer_tensor`), so the parent can compute what should arrive; the receiver copies every
layer into a per-request destination (as a KV pool write would) and can record each layer's
crc32 (`layer_crc`). Commands are plain tuples over a local `multiprocessing` pipe between our own
processes (never a network peer). Times are `time.monotonic()`, which is system-wide on
Linux, so the parent may subtract a sender's time from a receiver's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import zlib
from dataclasses import asdict

from splitserve.kvtransfer.base import FINAL_RECV_STATES, TransferConfig, TransferMeta


def layer_crc(kv) -> int:
    """crc32 of a layer's bytes: the tests' own bit-identity check, apart from the transfer's checksum."""
    import torch

    return zlib.crc32(memoryview(kv.reshape(-1).view(torch.uint8).numpy()))


def layer_tensor(meta: TransferMeta, layer: int, seed: int):
    """Deterministic payload of one layer: random bits of the layer's size, as its dtype."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + layer)
    raw = torch.empty(meta.layer_nbytes, dtype=torch.uint8).random_(generator=gen)
    return raw.view(meta.torch_dtype).view(meta.layer_shape)


class _ReceiverHost:
    def __init__(self, backend: str, config: TransferConfig, record_crc: bool = True, copy_layers: bool = True) -> None:
        from splitserve.kvtransfer import make_receiver

        self.receiver = make_receiver(backend, config)
        self.record_crc, self.copy_layers = record_crc, copy_layers
        self.crcs: dict[str, list[int]] = {}
        self.done_at: dict[str, float] = {}

    def address(self) -> str:
        return self.receiver.address

    def expect(self, meta_fields: dict, into_pool: bool = False) -> None:
        """Reserve; `into_pool`: also hand the receiver a decode node's hashing write (each layer
        copied into a KV pool, its checksum computed as it is copied)."""
        import torch

        from splitserve.kvtransfer import scatter_checksummed

        meta = TransferMeta(**meta_fields)
        dest = torch.empty(meta.layer_shape, dtype=meta.torch_dtype)
        crcs = self.crcs[meta.request_id] = []

        def write_layer(layer: int, kv) -> None:
            if self.copy_layers:
                dest.copy_(kv)
            if self.record_crc:
                crcs.append(layer_crc(kv))
            if layer == meta.num_layers - 1:
                self.done_at[meta.request_id] = time.monotonic()

        pool = [torch.zeros(meta.num_tokens + 3, meta.num_kv_heads, meta.head_dim, dtype=meta.torch_dtype)
                for _ in range(2)] if into_pool else []
        slots = torch.arange(meta.num_tokens + 2, 2, -1)

        def write_hashed(layer: int, kv, seed: int) -> int | None:
            value = scatter_checksummed(kv, *pool, slots, seed)
            write_layer(layer, kv)
            return value

        self.receiver.expect(meta, write_layer, write_hashed if into_pool else None)

    def poll(self, request_id: str) -> tuple[str, str]:
        info = self.receiver.info(request_id)
        return info.state.name, info.reason

    def wait(self, request_id: str, timeout_s: float) -> tuple[str, str]:
        end = time.monotonic() + timeout_s
        while self.receiver.poll(request_id) not in FINAL_RECV_STATES and time.monotonic() < end:
            time.sleep(0.005)
        return self.poll(request_id)

    def result(self, request_id: str) -> tuple[list[int], float | None]:
        return self.crcs.get(request_id, []), self.done_at.get(request_id)

    def stats(self) -> dict:
        return {"num_discarded": self.receiver.num_discarded, "num_pairs": getattr(self.receiver, "num_pairs", -1),
                "num_checksum_failures": self.receiver.num_checksum_failures}


def corrupted_layers(meta: TransferMeta, seed: int, fault: str) -> list:
    """The layers as a faulty wire would deliver them: "flip" (one byte of the middle layer),
    "truncate" (the middle layer's last quarter never arrived: zeros) or "reorder" (layers 0 and 1 swapped)."""
    import torch

    layers = [layer_tensor(meta, layer, seed).clone() for layer in range(meta.num_layers)]
    middle = layers[meta.num_layers // 2].reshape(-1).view(torch.uint8)
    if fault == "flip":
        middle[middle.numel() // 3] ^= 0x20
    elif fault == "truncate":
        middle[-(middle.numel() // 4):] = 0
    elif fault == "reorder":
        layers[0], layers[1] = layers[1], layers[0]
    else:
        raise ValueError(f"fault must be flip, truncate or reorder, got {fault!r}")
    return layers


def _corrupting_sender(address: str, config: TransferConfig, seed: int):
    """A torch sender whose payloads are corrupted after hashing: it declares the checksums of the
    intact layers (`layer_tensor`) while sending what it is given, as a faulty wire would."""
    from dataclasses import replace

    from splitserve.kvtransfer.torch_sender import TorchSender

    class CorruptingSender(TorchSender):
        def _checksum_words(self, job):
            return super()._checksum_words(replace(job, kv=layer_tensor(job.meta, job.layer, seed)))

    return CorruptingSender(address, config)


class _SenderHost:
    def __init__(self, backend: str, config: TransferConfig) -> None:
        self.backend, self.config = backend, config
        self.senders: dict = {}
        self.crcs: dict[str, list[int]] = {}
        self.begun_at: dict[str, float] = {}

    def sender(self, address: str):
        from splitserve.kvtransfer import make_sender

        if address not in self.senders:
            self.senders[address] = make_sender(self.backend, address, self.config)
        return self.senders[address]

    def send(self, address: str, meta_fields: dict, seed: int, layer_delay_s: float = 0.0) -> None:
        """Start sending on a thread of its own (requests to one address run concurrently)."""
        meta = TransferMeta(**meta_fields)
        layers = [layer_tensor(meta, layer, seed) for layer in range(meta.num_layers)]
        threading.Thread(target=self._send, args=(self.sender(address), meta, layers, layer_delay_s), daemon=True).start()

    def _send(self, sender, meta: TransferMeta, layers: list, layer_delay_s: float) -> None:
        self.crcs[meta.request_id] = [layer_crc(kv) for kv in layers]
        self.begun_at[meta.request_id] = time.monotonic()
        sender.begin(meta)
        for layer, kv in enumerate(layers):
            sender.send_layer(meta.request_id, layer, kv)
            time.sleep(layer_delay_s)
        sender.finish(meta.request_id)

    def wait(self, address: str, request_id: str, timeout_s: float) -> tuple[str, str]:
        end = time.monotonic() + timeout_s
        while request_id not in self.begun_at and time.monotonic() < end:
            time.sleep(0.005)
        sender = self.sender(address)
        state = sender.wait(request_id, max(0.0, end - time.monotonic()))
        return state.name, sender.info(request_id).reason

    def result(self, request_id: str) -> tuple[list[int], float | None]:
        return self.crcs.get(request_id, []), self.begun_at.get(request_id)

    def send_corrupted(self, address: str, meta_fields: dict, seed: int, fault: str) -> None:
        """Send one request whose bytes a faulty wire changed (`corrupted_layers`), on a pair group of its own."""
        meta = TransferMeta(**meta_fields)
        sender = self.senders[(address, fault)] = _corrupting_sender(address, self.config, seed)
        self._send(sender, meta, corrupted_layers(meta, seed, fault), 0.0)

    def abort(self, address: str, request_id: str) -> None:
        self.sender(address).abort(request_id)

    def send_garbage(self, address: str) -> None:
        """Form a pair group like a torch sender, then send a header that is not ours."""
        import torch

        from splitserve.kvtransfer import torch_pair as tp

        store = tp.connect_store(address, self.config.connect_timeout_s)
        pair_key, message = tp.join_message("garbage" + os.urandom(4).hex(), 1, "cpu")
        store.queue_push(tp.JOIN_QUEUE, message)
        group = tp.make_group(store, pair_key, tp.SENDER_RANK, "cpu", self.config.connect_timeout_s, 60.0)
        garbage = torch.arange(tp.HEADER_WORDS, dtype=torch.int64)  # the size gloo expects, not our magic
        group.send([garbage], tp.RECEIVER_RANK, tp.HEADER_TAG).wait(tp.td(5))


def _serve(conn, role: str, backend: str, config_fields: dict, kwargs: dict) -> None:
    import torch

    torch.set_num_threads(1)
    config = TransferConfig(**config_fields)
    host = _ReceiverHost(backend, config, **kwargs) if role == "receiver" else _SenderHost(backend, config)
    conn.send(("ok", None))
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", getattr(host, name)(*args)))
        except Exception:
            conn.send(("err", traceback.format_exc()))


class PeerProcess:
    def __init__(self, role: str, backend: str, config: TransferConfig, **kwargs) -> None:
        if role not in ("sender", "receiver"):
            raise ValueError(f"role must be 'sender' or 'receiver', got {role!r}")
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, role, backend, asdict(config), kwargs), daemon=True)
        self.process.start()
        self._reply(60.0)

    def call(self, name: str, *args, timeout_s: float = 30.0):
        self._conn.send((name, args))
        return self._reply(timeout_s)

    def _reply(self, timeout_s: float):
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"peer process did not answer within {timeout_s}s")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"peer process failed:\n{value}")
        return value

    def kill(self) -> None:
        """SIGKILL: the peer dies mid-whatever, as a crashed node would."""
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(10)

    def close(self) -> None:
        self._conn.close()
        self.process.join(5)
        if self.process.is_alive():
            self.kill()
