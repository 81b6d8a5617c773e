"""Where one torch-backend KV transfer spends its time: per-step timestamps on both sides.

    python benchmarks/kv_transfer_trace.py [--tokens 512] [--layers 8] [--kv-heads 4] [--rounds 31] [--no-checksum] [--timeline]

Moves `--rounds` transfers (plus one warm-up) of `--layers` x [2, tokens, kv_heads, 64] fp32 (by
default the `small` model's layers; SmolLM2's: --layers 30 --kv-heads 3) from this process to a
receiver process, like `benchmarks/kv_transfer.py` (each layer's checksum computed before the
clock, as a prefill node's read computes it, where the native kernels are built), with the sender's and receiver's steps wrapped to record
time.monotonic() (one clock across processes) relative to the sender's `begin()`. Prints the
median time of each phase (sender thread has the layers, receiver has the header, ack, first
payload posted / landed, last layer verified) and, with --timeline, every step of the median
transfer. --pin puts the sender's process on CPU 0 and the receiver's on CPU 1. Exploration only: the wrappers add a few microseconds a step; time it under the
timing lock.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import statistics
import time

import torch

from splitserve.kvtransfer import SendState, TransferConfig, TransferMeta, joined_layers, make_receiver, make_sender
from splitserve.kvtransfer import receiver_base, torch_pair, torch_receiver, torch_sender
from splitserve.sim.measure_transfer import read_checksum

EVENTS: list[tuple[str, float, float]] = []  # (step, start, end), this process
STEPS = {
    "receiver": [(torch_pair.PairLink, "recv_header"), (torch_pair.PairLink, "ack"), (torch_receiver.TorchReceiver, "_wait"),
                 (receiver_base.TrackedReceiver, "_deliver")],
    "sender": [(torch_sender.TorchSender, "_gather"), (torch_pair.PairLink, "post_header"),
               (torch_pair.PairLink, "wait_ack"), (torch_pair.PairLink, "post_payloads"),
               (torch_sender.TorchSender, "_hash_upto")],
}
PHASES = [("sender has the layers", "_gather", 0, "start"), ("receiver has the header", "recv_header", 0, "end"),
          ("receiver acked", "ack", 0, "end"), ("sender saw the ack", "wait_ack", 0, "end"),
          ("payloads posted", "post_payloads", 0, "start"), ("first payload landed", "_wait", 0, "end"),
          ("last layer verified", "_deliver", -1, "end")]


def _record(cls, name: str) -> None:
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            EVENTS.append((name, start, time.monotonic()))

    setattr(cls, name, wrapped)


def _receiver(conn, pin: bool) -> None:
    torch.set_num_threads(1)
    if pin:
        os.sched_setaffinity(0, {1})
    for cls, name in STEPS["receiver"]:
        _record(cls, name)
    receiver = make_receiver("torch", TransferConfig(timeout_s=60), host="127.0.0.1", port=0)
    conn.send(receiver.address)
    while (fields := conn.recv()) is not None:
        meta = TransferMeta(**fields)
        EVENTS.clear()
        receiver.expect(meta, lambda layer, kv: None)
        conn.send("ready")
        while receiver.poll(meta.request_id).name not in ("DONE", "FAILED"):
            time.sleep(0.001)
        conn.send((receiver.info(meta.request_id).ended_at, list(EVENTS)))
    receiver.close()


def _at(timeline: list, step: str, index: int, edge: str) -> float | None:
    hits = [(a, b) for name, a, b in timeline if name == step]
    return None if not hits else hits[index][0 if edge == "start" else 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--no-checksum", action="store_true")
    parser.add_argument("--timeline", action="store_true")
    parser.add_argument("--pin", action="store_true", help="sender on CPU 0, receiver on CPU 1 (like two hosts)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for cls, name in STEPS["sender"]:
        _record(cls, name)
    conn, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_receiver, args=(child, args.pin), daemon=True)
    proc.start()
    if args.pin:
        os.sched_setaffinity(0, {0})
    sender = make_sender("torch", conn.recv(), TransferConfig(timeout_s=60))
    totals, timelines = [], []
    try:
        for i in range(args.rounds + 1):
            meta = TransferMeta(f"t{i}", args.layers, args.tokens, args.kv_heads, 64, "float32",
                                checksum=not args.no_checksum)
            conn.send(meta.__dict__)
            conn.recv()
            layers = [kv.copy_(torch.randn(meta.layer_shape)) for kv in joined_layers(meta)]  # as a node lays them out
            sums = [read_checksum(meta, layer, kv) for layer, kv in enumerate(layers)]
            EVENTS.clear()
            start = time.monotonic()
            sender.begin(meta)
            for layer, kv in enumerate(layers):
                sender.send_layer(meta.request_id, layer, kv, checksum=sums[layer])
            sender.finish(meta.request_id)
            assert sender.wait(meta.request_id, 60) is SendState.DONE, sender.info(meta.request_id)
            ended_at, received = conn.recv()
            if i:  # round 0 forms the pair group
                totals.append(ended_at - start)
                timelines.append(sorted((a - start, b - start, name) for name, a, b in EVENTS + received))
    finally:
        sender.close()
        conn.send(None)
        proc.join(10)
    _report(args, meta, totals, [[(name, a, b) for a, b, name in tl] for tl in timelines])


def _report(args, meta: TransferMeta, totals: list[float], timelines: list) -> None:
    median = statistics.median(totals)
    print(f"{meta.total_nbytes / 1e6:.1f} MB in {args.layers} layers, checksum {meta.checksum}: median "
          f"{median * 1e3:.2f} ms ({meta.total_nbytes / median / 1e9:.2f} GB/s) over {len(totals)} transfers")
    for label, step, index, edge in PHASES:
        times = [t for t in (_at(tl, step, index, edge) for tl in timelines) if t is not None]
        print(f"  {label:26s} {statistics.median(times) * 1e3:7.3f} ms")
    if args.timeline:
        middle = timelines[totals.index(sorted(totals)[len(totals) // 2])]
        for name, a, b in middle:
            print(f"  {a * 1e3:8.3f} {b * 1e3:8.3f} ms  {name}")


if __name__ == "__main__":
    main()
