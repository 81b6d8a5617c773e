"""Nodes on one host sharing its cores by how many of them are stepping.

`splitserve up` runs every node of a local cluster on one machine. With a fixed thread count
each, a prefill and a decode node on 2 cores get 1 thread each, and at concurrency 1, where
they take turns (the prompt, then its tokens), each works on half the machine while the other
sleeps. With a share, each node's engine thread claims the cores before every step and after
every layer: it marks its slot busy in a small file all the host's nodes map, and runs on
`max(1, cores // nodes busy)` torch threads; when it has nothing to do it marks the slot idle.
So a node alone gets every core, two busy nodes half each. A node that starts stepping while
another is mid-step is oversubscribed until the other's next layer (a few ms), not its whole step.

The file holds an int32 per slot (MAX_SLOTS): the pid of the node stepping in it, 0 when idle;
`--cpu-share FILE:SLOT` names it and this node's slot (`LocalCluster` gives node k slot k, and a
restarted node its old one). A node that died mid-step would hold its share for good: at most once
a second, while others seem busy, a claim clears the slots whose process is gone. Nothing in the
file is trusted beyond that: a bad value costs threads, never correctness.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

MAX_SLOTS = 64
FILE_BYTES = 4 * MAX_SLOTS  # an int32 pid per slot


def parse_cpu_share(spec: str) -> tuple[str, int]:
    """("FILE", SLOT) from "FILE:SLOT"; ValueError naming the flag otherwise."""
    path, sep, slot = spec.rpartition(":")
    if not sep or not path or not slot.isdigit() or not 0 <= int(slot) < MAX_SLOTS:
        raise ValueError(f"--cpu-share must be FILE:SLOT with SLOT in [0, {MAX_SLOTS}), got {spec!r}")
    return path, int(slot)


def host_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class CpuShare:
    def __init__(self, path: str, slot: int, cores: int, check_dead_every_s: float = 1.0) -> None:
        if not 0 <= slot < MAX_SLOTS or cores < 1:
            raise ValueError(f"slot must be in [0, {MAX_SLOTS}) and cores >= 1, got {slot}, {cores}")
        self.slot, self.cores, self.pid = slot, cores, os.getpid()
        with open(path, "a+b") as file:  # made by the first node to come up; every node maps the same bytes
            if os.fstat(file.fileno()).st_size < FILE_BYTES:
                file.truncate(FILE_BYTES)
            self._map = mmap.mmap(file.fileno(), FILE_BYTES)
        self._pids = memoryview(self._map).cast("i")  # slot -> pid of the node stepping in it, 0 when idle
        self._threads = 0  # what this thread runs on now (0: not set yet)
        self._check_dead_every_s, self._next_check = check_dead_every_s, 0.0
        import torch  # here: LocalCluster makes share files without loading torch

        self._set_threads = torch.set_num_threads

    def claim(self) -> int:
        """Mark this node busy and run this thread's torch work on its share of the cores; returns the share."""
        self._pids[self.slot] = self.pid
        busy = [pid for pid in self._pids.tolist() if pid]
        if len(busy) > 1 and time.monotonic() >= self._next_check:
            busy = self._forget_dead(busy)
        threads = max(1, self.cores // len(busy))
        if threads != self._threads:
            self._set_threads(threads)
            self._threads = threads
        return threads

    def release(self) -> None:
        """Nothing to do: the other nodes may have this node's cores."""
        self._pids[self.slot] = 0

    def close(self) -> None:
        self.release()
        self._pids.release()
        self._map.close()

    def _forget_dead(self, busy: list[int]) -> list[int]:
        """Clear the slots of nodes that died while stepping (else they would hold their share for good)."""
        self._next_check = time.monotonic() + self._check_dead_every_s
        for slot, pid in enumerate(self._pids.tolist()):
            if pid and pid != self.pid and not _alive(pid):
                self._pids[slot] = 0
                busy.remove(pid)
        return busy


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def share_file(folder: Path) -> str:
    """A fresh share file for one local cluster (its nodes' slots all idle)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cpu-share"
    path.write_bytes(bytes(FILE_BYTES))
    return str(path)
