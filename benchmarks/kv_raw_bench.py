"""Raw torch.distributed (gloo) point-to-point bandwidth between two local processes.

The baseline the KV transfer backends are measured against: the same bytes moved by a bare
`ProcessGroupGloo.send`/`recv` on a 2-rank group built from a `TCPStore`, with nothing around
it (no headers, no checksum, no copies). `measure_gloo_bandwidth(num_bytes)` spawns a sender
and a receiver process, moves the payload `repeats` times after one warm-up, and returns the
median seconds per transfer measured on the receiver (post recv -> recv complete, so it
includes the sender's start).
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass

_TIMEOUT = datetime.timedelta(seconds=60)


@dataclass(frozen=True)
class RawResult:
    num_bytes: int
    chunk_bytes: int
    seconds: float  # median per transfer

    @property
    def gbytes_per_s(self) -> float:
        return self.num_bytes / self.seconds / 1e9


def _chunks(num_bytes: int, chunk_bytes: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_bytes, num_bytes)) for s in range(0, num_bytes, chunk_bytes)]


def _peer(rank: int, port: int, num_bytes: int, chunk_bytes: int, repeats: int, out) -> None:
    import torch
    from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore

    torch.set_num_threads(1)
    store = TCPStore("127.0.0.1", port, None, False, _TIMEOUT)
    pg = ProcessGroupGloo(PrefixStore("raw", store), rank, 2, _TIMEOUT)
    buf = torch.full((num_bytes,), 7, dtype=torch.uint8) if rank == 0 else torch.empty(num_bytes, dtype=torch.uint8)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        op = pg.send if rank == 0 else pg.recv
        works = [op([buf[lo:hi]], 1 - rank, 0) for lo, hi in _chunks(num_bytes, chunk_bytes)]
        for work in works:
            work.wait(_TIMEOUT)
        times.append(time.perf_counter() - start)
        pg.barrier().wait(_TIMEOUT)
    if out is not None:
        out.send(times[1:])


def _collect(conn, procs) -> list[float]:
    deadline = time.monotonic() + _TIMEOUT.total_seconds()
    while not conn.poll(0.2):
        if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError("raw gloo benchmark peers failed or did not report")
    return conn.recv()


def measure_gloo_bandwidth(num_bytes: int, repeats: int = 5, chunk_bytes: int | None = None) -> RawResult:
    """Median seconds to move `num_bytes` rank 0 -> rank 1 over loopback gloo (chunked if asked)."""
    from torch.distributed import TCPStore

    if num_bytes < 1 or repeats < 1:
        raise ValueError("num_bytes and repeats must be >= 1")
    chunk = min(chunk_bytes or num_bytes, num_bytes)
    store = TCPStore("127.0.0.1", 0, None, True, _TIMEOUT, wait_for_workers=False)
    ctx = mp.get_context("spawn")
    recv_end, send_end = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=_peer, args=(r, store.port, num_bytes, chunk, repeats, send_end if r else None)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        times = _collect(recv_end, procs)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return RawResult(num_bytes, chunk, statistics.median(times))


if __name__ == "__main__":
    for n in (8 << 20, 100 << 20):
        for c in (None, 64 << 20, 16 << 20, 4 << 20, 1 << 20):
            r = measure_gloo_bandwidth(n, chunk_bytes=c)
            print(f"{n >> 20:4d} MiB chunk {r.chunk_bytes >> 20:4d} MiB: {r.seconds * 1e3:7.2f} ms {r.gbytes_per_s:6.2f} GB/s")
