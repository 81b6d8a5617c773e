"""`GrpcReceiver`: the decode side of the gRPC backend, and the `KVTransfer` servicer.

One `PushKV` call carries one request. Each chunk is checked against the call's first chunk
and the reservation (`_admit` on a layer's first chunk) before its bytes are copied into the
call's layer buffer, whose size is the reservation's layer size; nothing is unpickled: the
tensor is `torch.frombuffer` over those bytes with dtype and shape from the reservation. A
completed layer goes to `_deliver` on a worker thread. Any violation aborts the call with a
status code and fails the reservation; a call that ends early or is cancelled (the sender
died or aborted) fails it too.

The servicer is grpc.aio: the decode node adds it to its own server
(`GrpcReceiver(config, grpc_server=server)`), or the receiver runs a server of its own on
`host:port` in a background thread.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import torch

from splitserve.api.v1 import kvtransfer_pb2, kvtransfer_pb2_grpc
from splitserve.grpc_util import MessageGuard
from splitserve.kvtransfer.base import FINAL_RECV_STATES, RecvState, TransferConfig
from splitserve.kvtransfer.receiver_base import Reservation, TrackedReceiver
from splitserve.kvtransfer.checksum import ChecksumKind, to_int64
from splitserve.kvtransfer.wire import Kind, LayerHeader, request_hash
from splitserve.runtime.torch_threads import serially

SERVER_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


class _Rejected(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _header(chunk: kvtransfer_pb2.KVChunk) -> LayerHeader:
    """The chunk's layer as a LAYER entry (its checksum value, on the last chunk, is read apart)."""
    if chunk.checksum_kind not in ChecksumKind._value2member_map_:
        raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"unknown checksum kind {chunk.checksum_kind}")
    return LayerHeader(Kind.LAYER, request_hash(chunk.request_id), chunk.layer, chunk.num_tokens, chunk.layer_nbytes,
                       checksum_kind=ChecksumKind(chunk.checksum_kind))


def _code_for(reason: str) -> grpc.StatusCode:
    """Status code for a failed reservation's reason (see receiver_base / wire.mismatch)."""
    if reason.startswith("timed out"):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if "checksum mismatch" in reason:
        return grpc.StatusCode.DATA_LOSS
    if "write_layer raised" in reason:
        return grpc.StatusCode.INTERNAL
    if reason.startswith("layer "):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.FAILED_PRECONDITION  # aborted, closed, already done


class _Call:
    """One PushKV call: validates chunks and assembles layers."""

    def __init__(self, receiver: GrpcReceiver) -> None:
        self.receiver = receiver
        self.request_id = ""
        self.res: Reservation | None = None
        self.header: LayerHeader | None = None
        self.buffer = bytearray()
        self.filled = 0

    def feed(self, chunk: kvtransfer_pb2.KVChunk) -> LayerHeader | None:
        """Copy one chunk in; returns the layer's header once the layer is complete."""
        if self.res is None:
            self.request_id = chunk.request_id
        if chunk.request_id != self.request_id:
            raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, "request_id changed within a PushKV call")
        if self.header is None:
            self._start_layer(chunk)
        header = _header(chunk)
        if header != self.header or chunk.offset != self.filled or self.filled + len(chunk.data) > header.nbytes:
            raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                            f"chunk of layer {chunk.layer} at offset {chunk.offset} does not continue layer "
                            f"{self.header.layer} at offset {self.filled}")
        self.buffer[self.filled:self.filled + len(chunk.data)] = chunk.data
        self.filled += len(chunk.data)
        if self.filled < header.nbytes:
            return None
        if header.checksum_kind is not ChecksumKind.NONE:
            if not chunk.HasField("checksum"):
                raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"layer {header.layer} ends without its checksum")
            self.receiver._expect_checksum(self.res, header.layer, header.checksum_kind, to_int64(chunk.checksum))
        return header

    def layer(self) -> torch.Tensor:
        meta = self.res.meta
        # kv: [2, num_tokens, num_kv_heads, head_dim] over the call's buffer (no copy)
        return torch.frombuffer(self.buffer, dtype=meta.torch_dtype).view(meta.layer_shape)

    def next_layer(self) -> None:
        self.header, self.filled = None, 0

    def _start_layer(self, chunk: kvtransfer_pb2.KVChunk) -> None:
        header = _header(chunk)
        if chunk.offset != 0:
            raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"layer {chunk.layer} starts at offset {chunk.offset}")
        res = self.receiver._admit(header)
        if res is None or (self.res is not None and res is not self.res):
            raise self.receiver._rejection(chunk.request_id)
        if len(self.buffer) != header.nbytes:
            self.buffer = bytearray(header.nbytes)  # == the reservation's layer size
        self.res, self.header = res, header


class KVTransferServicer(kvtransfer_pb2_grpc.KVTransferServicer):
    def __init__(self, receiver: GrpcReceiver) -> None:
        self.receiver = receiver

    async def PushKV(self, request_iterator, context):
        call = _Call(self.receiver)
        try:
            async for chunk in request_iterator:
                header = call.feed(chunk)
                if header is not None:
                    await asyncio.to_thread(self.receiver._deliver, call.res, header, call.layer())
                    if call.res.state is RecvState.FAILED:
                        raise _Rejected(_code_for(call.res.reason), call.res.reason)
                    call.next_layer()
            if call.res is None or call.res.state is not RecvState.DONE:
                raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, "stream ended before the last layer")
            return kvtransfer_pb2.PushKVReply(num_layers=call.res.num_written, num_bytes=call.res.num_bytes)
        except _Rejected as exc:
            await context.abort(exc.code, str(exc))
        finally:
            if call.res is not None and call.res.state not in FINAL_RECV_STATES:
                self.receiver._fail(call.res, "PushKV call ended early (sender went away or aborted)")


class GrpcReceiver(TrackedReceiver):
    def __init__(self, config: TransferConfig = TransferConfig(), host: str = "127.0.0.1", port: int = 0,
                 grpc_server: grpc.aio.Server | None = None) -> None:
        super().__init__(config)
        self.servicer = KVTransferServicer(self)
        self._own: _ServerThread | None = None
        if grpc_server is not None:
            kvtransfer_pb2_grpc.add_KVTransferServicer_to_server(self.servicer, grpc_server)
            self._address = ""
        else:
            self._own = _ServerThread(self.servicer, host, port)
            self._address = f"{host}:{self._own.port}"

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        return self._own.port if self._own is not None else 0

    def close(self) -> None:
        self._fail_all("receiver closed")
        if self._own is not None:
            self._own.stop()
            self._own = None

    def _rejection(self, request_id: str) -> _Rejected:
        try:
            info = self.info(request_id)
        except KeyError:
            return _Rejected(grpc.StatusCode.NOT_FOUND, f"no KV reservation for request {request_id!r}")
        reason = info.reason if info.state is RecvState.FAILED else f"transfer is {info.state.name}"
        return _Rejected(_code_for(reason), reason)


class _ServerThread:
    """A grpc.aio server with its own event loop on a daemon thread."""

    def __init__(self, servicer: KVTransferServicer, host: str, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=serially(self.loop.run_forever), name="kv-grpc-server", daemon=True)
        self.thread.start()
        self.server, self.port = asyncio.run_coroutine_threadsafe(self._start(servicer, host, port), self.loop).result(30)

    async def _start(self, servicer, host: str, port: int):
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[MessageGuard()])
        kvtransfer_pb2_grpc.add_KVTransferServicer_to_server(servicer, server)
        bound = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        return server, bound

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
