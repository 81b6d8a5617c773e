"""KV transfer time vs bytes for each backend, as benchmarks/kv_transfer.py measures it: a
receiver in another process, one request's layers sent from here, timed from `begin()` to the
receiver holding the last layer (both sides read CLOCK_MONOTONIC through perf_counter).
"""

from __future__ import annotations

import multiprocessing as mp
import time

BACKENDS = ("torch", "grpc")


def _receiver_main(backend: str, conn) -> None:
    import torch

    from splitserve.kvtransfer import TransferConfig, TransferMeta, make_receiver

    torch.set_num_threads(1)
    receiver = make_receiver(backend, TransferConfig(timeout_s=120), host="127.0.0.1", port=0)
    conn.send(receiver.address)
    while (message := conn.recv()) is not None:
        meta, stamps = TransferMeta(**message), []
        receiver.expect(meta, lambda layer, kv, last=meta.num_layers - 1: stamps.append(time.perf_counter())
                        if layer == last else None)
        conn.send("ready")
        while receiver.poll(meta.request_id).name not in ("DONE", "FAILED"):
            time.sleep(0.001)
        conn.send((receiver.poll(meta.request_id).name, stamps[-1] if stamps else None))
    receiver.close()


def _one_transfer(sender, conn, meta) -> float:
    """begin() -> the receiver holding the last layer, in seconds."""
    import torch

    from splitserve.kvtransfer import SendState, joined_layers

    conn.send(meta.__dict__)
    conn.recv()
    layers = [kv.copy_(torch.randn(meta.layer_shape)) for kv in joined_layers(meta)]  # as a prefill node lays them out
    sums = [read_checksum(meta, layer, kv) for layer, kv in enumerate(layers)]
    start = time.perf_counter()
    sender.begin(meta)
    for layer, kv in enumerate(layers):
        sender.send_layer(meta.request_id, layer, kv, checksum=sums[layer])
    sender.finish(meta.request_id)
    if sender.wait(meta.request_id, 120) != SendState.DONE:
        raise RuntimeError(f"transfer {meta.request_id} failed on the sender")
    state, stamp = conn.recv()
    if state != "DONE" or stamp is None:
        raise RuntimeError(f"transfer {meta.request_id}: the receiver reported {state}")
    return stamp - start


def read_checksum(meta, layer: int, kv) -> int | None:
    """The checksum a prefill node's read of the layer computes as it copies it (native kernels on
    CPU), so the sender does not hash inside the transfer; None where the sender would."""
    from splitserve.engine import native
    from splitserve.kvtransfer.checksum import ChecksumKind, checksum
    from splitserve.kvtransfer.wire import as_bytes, checksum_seed

    if not meta.checksum or native.kv_ops() is None:
        return None
    return checksum(ChecksumKind.MULSUM_64, as_bytes(kv), checksum_seed(meta.request_id, layer))


def transfer_points(backend: str, layout: dict, token_counts: list[int], repeats: int) -> list[tuple[int, float]]:
    """[(bytes, seconds)] per transfer; layout: num_layers, num_kv_heads, head_dim, dtype."""
    from splitserve.kvtransfer import TransferConfig, TransferMeta, make_sender

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver_main, args=(backend, child), daemon=True)
    proc.start()
    points = []
    try:
        sender = make_sender(backend, parent.recv(), TransferConfig(timeout_s=120))
        for n in token_counts:
            for i in range(repeats + 1):  # the first forms the pair group: not counted
                meta = TransferMeta(request_id=f"{backend}-{n}-{i}", num_tokens=n, **layout)
                seconds = _one_transfer(sender, parent, meta)
                if i:
                    points.append((meta.total_nbytes, seconds))
        sender.close()
        parent.send(None)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return points
