"""router/cluster/stall.py against a real in-process gRPC server whose handler hangs (a stopped node)."""

import asyncio

import grpc
import pytest

from router.cluster.failover import NodeCallError
from router.cluster.stall import CallWatch, cancelled_when_down

METHOD = "/test.Hang/Call"


class _Hang(grpc.GenericRpcHandler):
    def service(self, details):
        async def behaviour(request: bytes, context) -> bytes:
            if request == b"hang":
                await asyncio.sleep(60)
            return b"ok:" + request
        return grpc.unary_unary_rpc_method_handler(behaviour) if details.method == METHOD else None


async def _with_server(body):
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Hang(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await body(channel.unary_unary(METHOD))
    finally:
        await server.stop(0)


async def _guarded(method, request: bytes, watch: CallWatch | None):
    call = method(request, timeout=30)
    with cancelled_when_down(watch, call, "node:1", "Call"):
        return await call


def test_a_hung_call_fails_over_as_unavailable_once_the_node_is_down():
    async def body(method):
        watch = CallWatch()
        asyncio.get_running_loop().call_later(0.2, watch.fire)
        started = asyncio.get_running_loop().time()
        with pytest.raises(NodeCallError) as err:
            await _guarded(method, b"hang", watch)
        return err.value, asyncio.get_running_loop().time() - started
    error, waited = asyncio.run(_with_server(body))
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.address == "node:1" and error.call == "Call"
    assert waited < 5


def test_a_call_of_a_healthy_node_is_left_alone():
    assert asyncio.run(_with_server(lambda method: _guarded(method, b"x", CallWatch()))) == b"ok:x"
    assert asyncio.run(_with_server(lambda method: _guarded(method, b"y", None))) == b"ok:y"  # a node no longer known


def test_the_callers_own_cancellation_stays_a_cancellation():
    async def body(method):
        task = asyncio.ensure_future(_guarded(method, b"hang", CallWatch()))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(_with_server(body))
