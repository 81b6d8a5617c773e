"""Raw torch.distributed (gloo) point-to-point bandwidth between two local processes.

The baseline the KV transfer backends are measured against: the same bytes moved by a bare
`ProcessGroupGloo.send`/`recv` on a 2-rank group built from a `TCPStore`, with nothing around
it (no headers, no checksum, no copies). `RawGlooPair()` spawns a sender and a receiver
process that stay up, so a benchmark can interleave raw moves with its own transfers;
`move(num_bytes, chunk_bytes)` returns the seconds one transfer took, measured on the receiver
(post recv -> recv complete, so it includes the sender's start; buffers are allocated and
touched before the clock starts). `move_from_idle` times the same bytes the way a KV backend
is timed: the receiver's recvs are posted and it sleeps in them (idle) until the sender starts,
20 ms later; from the sender's first send to the receiver's last completion (one monotonic
clock across processes), so it includes waking the idle receiver. `measure_gloo_bandwidth` is
the one-shot median.
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


def _peer(rank: int, port: int, conn) -> None:
    """Moves what each ("move", num_bytes, chunk_bytes) command says until None; rank 1 reports seconds."""
    import torch
    from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore

    torch.set_num_threads(1)
    store = TCPStore("127.0.0.1", port, None, False, _TIMEOUT)
    pg = ProcessGroupGloo(PrefixStore("raw", store), rank, 2, _TIMEOUT)
    buf = torch.empty(0, dtype=torch.uint8)
    while (command := conn.recv()) is not None:
        kind, num_bytes, chunk_bytes = command
        if buf.numel() < num_bytes:
            buf = torch.full((num_bytes,), 7, dtype=torch.uint8)
        chunks = [buf[lo:hi] for lo, hi in _chunks(num_bytes, chunk_bytes)]
        if kind == "idle":
            conn.send(_move_from_idle(pg, rank, chunks))
            continue
        pg.barrier().wait(_TIMEOUT)
        start = time.perf_counter()
        op = pg.send if rank == 0 else pg.recv
        for work in [op([chunk], 1 - rank, 0) for chunk in chunks]:
            work.wait(_TIMEOUT)
        conn.send(time.perf_counter() - start)


def _move_from_idle(pg, rank: int, chunks: list) -> float:
    """Rank 1 posts its recvs and waits in them; rank 0 sends 20 ms later. time.monotonic() of
    rank 0's start / of rank 1's end."""
    works = [pg.recv([chunk], 0, 0) for chunk in chunks] if rank == 1 else []
    pg.barrier().wait(_TIMEOUT)
    if rank == 0:
        time.sleep(0.02)
        start = time.monotonic()
        works = [pg.send([chunk], 1, 0) for chunk in chunks]
    for work in works:
        work.wait(_TIMEOUT)
    return start if rank == 0 else time.monotonic()


class RawGlooPair:
    def __init__(self) -> None:
        from torch.distributed import TCPStore

        self._store = TCPStore("127.0.0.1", 0, None, True, _TIMEOUT, wait_for_workers=False)
        ctx = mp.get_context("spawn")
        self._conns, self._procs = [], []
        for rank in (0, 1):
            mine, theirs = ctx.Pipe()
            self._conns.append(mine)
            self._procs.append(ctx.Process(target=_peer, args=(rank, self._store.port, theirs), daemon=True))
            self._procs[-1].start()

    def move(self, num_bytes: int, chunk_bytes: int | None = None) -> float:
        """Seconds to move `num_bytes` rank 0 -> rank 1 (in `chunk_bytes` messages), on the receiver."""
        return self._command("move", num_bytes, chunk_bytes)[1]

    def move_from_idle(self, num_bytes: int, chunk_bytes: int | None = None) -> float:
        """Seconds from rank 0's first send to rank 1's last completion, rank 1 idle in its recvs."""
        start, end = self._command("idle", num_bytes, chunk_bytes)
        return end - start

    def _command(self, kind: str, num_bytes: int, chunk_bytes: int | None) -> list[float]:
        if num_bytes < 1:
            raise ValueError("num_bytes must be >= 1")
        for conn in self._conns:
            conn.send((kind, num_bytes, min(chunk_bytes or num_bytes, num_bytes)))
        return [self._reply(conn) for conn in self._conns]

    def _reply(self, conn) -> float:
        deadline = time.monotonic() + _TIMEOUT.total_seconds()
        while not conn.poll(0.2):
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in self._procs):
                raise RuntimeError("raw gloo benchmark peers failed or did not report")
        return conn.recv()

    def close(self) -> None:
        for conn in self._conns:
            conn.send(None)
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> RawGlooPair:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_gloo_bandwidth(num_bytes: int, repeats: int = 5, chunk_bytes: int | None = None) -> RawResult:
    """Median seconds to move `num_bytes` rank 0 -> rank 1 over loopback gloo (chunked if asked),
    after one warm-up move."""
    if num_bytes < 1 or repeats < 1:
        raise ValueError("num_bytes and repeats must be >= 1")
    with RawGlooPair() as pair:
        times = [pair.move(num_bytes, chunk_bytes) for _ in range(repeats + 1)][1:]
    return RawResult(num_bytes, min(chunk_bytes or num_bytes, num_bytes), statistics.median(times))


if __name__ == "__main__":
    for n in (8 << 20, 100 << 20):
        for c in (None, 64 << 20, 16 << 20, 4 << 20, 1 << 20):
            r = measure_gloo_bandwidth(n, chunk_bytes=c)
            print(f"{n >> 20:4d} MiB chunk {r.chunk_bytes >> 20:4d} MiB: {r.seconds * 1e3:7.2f} ms {r.gbytes_per_s:6.2f} GB/s")
