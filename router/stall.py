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

import grpc

from router.failover import NodeCallError


@contextlib.contextmanager
def cancelled_when_down(down: asyncio.Event | None, call, address: str, name: str):
    """Around awaiting `call` (a grpc.aio call): cancel it when `down` is set; raise UNAVAILABLE then."""
    if down is None:
        yield
        return
    watcher = asyncio.ensure_future(down.wait())
    watcher.add_done_callback(lambda w: w.cancelled() or call.cancel())
    try:
        yield
    except (asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
        fired = watcher.done() and not watcher.cancelled()
        current = asyncio.current_task()
        if not fired or (current is not None and current.cancelling()) or not _is_cancellation(exc):
            raise
        raise NodeCallError(grpc.StatusCode.UNAVAILABLE, "the node stopped answering health checks during the call",
                            address, name) from None
    finally:
        watcher.cancel()


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError) or exc.code() == grpc.StatusCode.CANCELLED
