"""Hung nodes: a node call is cancelled as soon as the health checks take its node out.

A crashed node fails its calls at once (the connection resets), but a hung one (SIGSTOP, a
stuck engine, a partition that drops packets) just stops answering, and its calls would wait
for the request's deadline. The registry's checks notice within about
`interval_s * unhealthy_after + timeout_s`; this guard then cancels the call and raises
UNAVAILABLE, which the orchestrator's failover treats like a crash: the request goes on
elsewhere from the tokens already sent. The hung node, if it wakes, sees the cancellation and
frees what the request held.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import grpc

from router.cluster.failover import NodeCallError


@dataclass
class _Watched:
    call: object  # a grpc.aio call
    fired: bool = False  # cancelled by fire(), not by anyone else


class CallWatch:
    """One node's calls in flight; `fire()` (the node turned unhealthy) cancels them all."""

    def __init__(self):
        self._calls: dict[int, _Watched] = {}

    def fire(self) -> None:
        for watched in list(self._calls.values()):
            watched.fired = True
            watched.call.cancel()

    @contextlib.contextmanager
    def watching(self, call, address: str, name: str):
        """Around awaiting `call` (a grpc.aio call): when fire() cancels it, raise UNAVAILABLE."""
        watched = self._calls[id(call)] = _Watched(call)
        try:
            yield
        except (asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
            current = asyncio.current_task()
            if not watched.fired or (current is not None and current.cancelling()) or not _is_cancellation(exc):
                raise
            raise NodeCallError(grpc.StatusCode.UNAVAILABLE, "the node stopped answering health checks during the "
                                "call", address, name) from None
        finally:
            self._calls.pop(id(call), None)


def cancelled_when_down(watch: CallWatch | None, call, address: str, name: str):
    """`watch.watching(...)`, or nothing for a node the registry does not know (any more)."""
    return watch.watching(call, address, name) if watch is not None else contextlib.nullcontext()


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError) or exc.code() == grpc.StatusCode.CANCELLED
