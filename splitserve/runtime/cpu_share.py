"""Nodes on one host sharing its cores by how many of them are stepping.

`splitserve up` runs every node of a local cluster on one machine. With a fixed thread count
each, a prefill and a decode node on 2 cores get 1 thread each, and at concurrency 1, where
they take turns (the prompt, then its tokens), each works on half the machine while the other
sleeps. With a share, each node's engine thread claims the cores before every step and after
every layer: it marks its slot busy in a small file all the host's nodes map, and runs on
`max(1, cores // nodes busy)` torch threads; when it has nothing to do it marks the slot idle.
So a node alone gets every core, two busy nodes half each. A node that starts stepping while
another is mid-step is oversubscribed until the other's next layer (a few ms), not its whole step.

The file holds one byte per slot (MAX_SLOTS); `--cpu-share FILE:SLOT` names it and this node's
slot (`LocalCluster` gives node k slot k). Nothing in it is trusted beyond counting non-zero bytes.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

MAX_SLOTS = 64


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
    def __init__(self, path: str, slot: int, cores: int) -> None:
        if not 0 <= slot < MAX_SLOTS or cores < 1:
            raise ValueError(f"slot must be in [0, {MAX_SLOTS}) and cores >= 1, got {slot}, {cores}")
        self.slot, self.cores = slot, cores
        with open(path, "a+b") as file:  # made by the first node to come up; every node maps the same bytes
            if os.fstat(file.fileno()).st_size < MAX_SLOTS:
                file.truncate(MAX_SLOTS)
            self._map = mmap.mmap(file.fileno(), MAX_SLOTS)
        self._threads = 0  # what this thread runs on now (0: not set yet)
        import torch  # here: LocalCluster makes share files without loading torch

        self._set_threads = torch.set_num_threads

    def claim(self) -> int:
        """Mark this node busy and run this thread's torch work on its share of the cores; returns the share."""
        self._map[self.slot] = 1
        threads = max(1, self.cores // max(1, MAX_SLOTS - self._map[:].count(0)))
        if threads != self._threads:
            self._set_threads(threads)
            self._threads = threads
        return threads

    def release(self) -> None:
        """Nothing to do: the other nodes may have this node's cores."""
        self._map[self.slot] = 0

    def close(self) -> None:
        self.release()
        self._map.close()


def share_file(folder: Path) -> str:
    """A fresh share file for one local cluster (its nodes' slots all idle)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cpu-share"
    path.write_bytes(bytes(MAX_SLOTS))
    return str(path)
