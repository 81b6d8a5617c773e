"""Keeping torch's OpenMP work on as few threads as possible in a serving process.

Measured with this project's torch (2.13, GNU OpenMP) on a 2-core machine: once a thread other
than the engine's has run torch work and stays alive, every parallel region the engine thread
opens costs ~75-150 us more (a 576x576 one-row linear: 30 -> 150 us), which doubled a served
2-thread node's decode step (SmolLM2, batch 1: 31 ms alone, 66 ms served). A thread that has
exited leaves no such cost. So work done once at start-up (building the engine: loading, packing
the weights) runs on a thread of its own that then ends, not on an executor thread that lives on;
and the other threads that live on (the event loop's, its executor's) run torch work on one
OpenMP thread (`keep_this_thread_serial`), which opens no parallel region and leaves the engine
thread its speed (the same linear: 131 us after an executor thread's copies, 33 us when that
thread was kept serial).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


async def in_passing_thread(fn: Callable[..., T], *args) -> T:
    """fn(*args) on a new thread that ends with it; awaited without blocking the event loop."""
    executor = ThreadPoolExecutor(1, thread_name_prefix=f"start-{getattr(fn, '__name__', 'work')}")
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    finally:
        await asyncio.to_thread(executor.shutdown)  # its one thread ends (after fn, if we were cancelled)


def keep_this_thread_serial() -> None:
    """This thread's torch work runs on one OpenMP thread; torch's setting for other threads stays."""
    torch.get_num_threads()  # torch sets a thread's OpenMP count on its first use: let it, then override
    openmp = _openmp_runtime()
    if openmp is not None:
        openmp.omp_set_num_threads(1)


def serially(target: Callable[..., T]) -> Callable[..., T]:
    """`target` for a thread that lives beside the engine's (KV transfer, chunk fetches): it keeps its
    torch work serial first. Such a thread opening parallel regions slowed a 2-thread decode node's steps."""

    @functools.wraps(target)
    def run(*args, **kwargs) -> T:
        keep_this_thread_serial()
        return target(*args, **kwargs)

    return run


def serial_executor(max_workers: int | None = None) -> ThreadPoolExecutor:
    """An executor (for asyncio.to_thread) whose threads keep their torch work serial."""
    return ThreadPoolExecutor(max_workers, thread_name_prefix="serial-io", initializer=keep_this_thread_serial)


@lru_cache(maxsize=1)
def _openmp_runtime():
    """The GNU OpenMP runtime torch loaded (found by its soname), or None for a torch without it."""
    try:
        return ctypes.CDLL("libgomp.so.1")
    except OSError:
        return None
