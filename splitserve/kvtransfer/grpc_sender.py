"""`GrpcSender`: the prefill side of the gRPC backend (one per decode node).

`begin` opens a client-streaming `PushKV` call whose request iterator reads that request's
queue; grpc's own thread drains it, so `send_layer` only enqueues. A layer is cut into
`grpc_chunk_bytes` chunks (one bytes copy each, as protobuf needs); when checksummed, the
layer's checksum travels on its last chunk: the one the prefill node computed while reading the
layer (MULSUM_64), else its xxh3-64, computed chunk by chunk after each chunk is handed to grpc
(so it overlaps the send). The call's deadline is the request's
timeout. DONE only when the decode node replied OK, i.e. it wrote and verified every layer;
a status code from it fails the request with that code and message as the reason.
"""

from __future__ import annotations

import queue
import threading

import grpc
import torch
import xxhash

from splitserve.api.v1 import kvtransfer_pb2, kvtransfer_pb2_grpc
from splitserve.kvtransfer.base import TransferConfig, TransferMeta
from splitserve.kvtransfer.sender_base import Job, JobKind, TrackedSender, checksum_kind
from splitserve.kvtransfer.torch_pair import split_address
from splitserve.kvtransfer.checksum import MASK64, ChecksumKind
from splitserve.kvtransfer.wire import as_bytes, checksum_seed, chunk_ranges


class GrpcSender(TrackedSender):
    DONE_WHEN_SENT = False

    def __init__(self, address: str, config: TransferConfig = TransferConfig(),
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        super().__init__(config)
        split_address(address)
        self.address = address
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        self._channel = (grpc.secure_channel(address, credentials, options) if credentials is not None
                         else grpc.insecure_channel(address, options))
        self._stub = kvtransfer_pb2_grpc.KVTransferStub(self._channel)
        self._lock = threading.Lock()
        self._calls: dict[str, tuple[queue.SimpleQueue, grpc.Future]] = {}

    def _submit(self, job: Job) -> None:
        rid = job.meta.request_id
        if job.kind is JobKind.BEGIN:
            jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
            future = self._stub.PushKV.future(self._chunks(job.meta, jobs), timeout=self.config.timeout_s)
            with self._lock:
                self._calls[rid] = (jobs, future)
            future.add_done_callback(lambda f, rid=rid: self._on_reply(rid, f))
            return
        with self._lock:
            call = self._calls.get(rid)
        if call is None:
            return
        jobs, future = call
        jobs.put(job if job.kind is JobKind.LAYER else None)  # FINISH/ABORT end the stream
        if job.kind is JobKind.ABORT:
            future.cancel()

    def _shutdown(self) -> None:
        with self._lock:
            calls = list(self._calls.values())
        for jobs, future in calls:
            jobs.put(None)
            future.cancel()
        self._channel.close()

    def _chunks(self, meta: TransferMeta, jobs: queue.SimpleQueue):
        """The call's request iterator (runs on a grpc thread)."""
        rid = meta.request_id
        while True:
            try:
                job = jobs.get(timeout=max(0.01, self._remaining_s(rid)))
            except queue.Empty:
                return
            if job is None or not self._is_live(rid):
                return
            if job.ready is not None:
                torch.cuda.current_stream(job.kv.device).wait_event(job.ready)
            yield from self._layer_chunks(meta, job)
            self._layer_sent(rid, meta.layer_nbytes)

    def _layer_chunks(self, meta: TransferMeta, job: Job):
        flat = as_bytes(job.kv)
        if flat.device.type != "cpu":
            flat = flat.cpu()
        data = memoryview(flat.numpy())
        kind = checksum_kind(job) if job.checksum is not None else _streamed_kind(meta)
        hasher = xxhash.xxh3_64(seed=checksum_seed(meta.request_id, job.layer)) if kind is ChecksumKind.XXH3_64 else None
        self._mark_sending(meta.request_id)
        ranges = chunk_ranges(meta.layer_nbytes, self.config.grpc_chunk_bytes)
        for i, (lo, hi) in enumerate(ranges):
            extra = {}
            if kind is not ChecksumKind.NONE and i == len(ranges) - 1:
                if hasher is not None:
                    hasher.update(data[lo:hi])
                extra["checksum"] = job.checksum & MASK64 if hasher is None else hasher.intdigest()
            yield kvtransfer_pb2.KVChunk(request_id=meta.request_id, layer=job.layer, num_tokens=meta.num_tokens,
                                         layer_nbytes=meta.layer_nbytes, offset=lo, data=bytes(data[lo:hi]),
                                         checksum_kind=kind, **extra)
            if hasher is not None and i < len(ranges) - 1:
                hasher.update(data[lo:hi])  # grpc moves the chunk meanwhile

    def _on_reply(self, rid: str, future: grpc.Future) -> None:
        with self._lock:
            self._calls.pop(rid, None)
        if future.cancelled():
            self._fail(rid, "cancelled")
            return
        error = future.exception()
        if error is None:
            self._complete(rid)
        elif isinstance(error, grpc.RpcError):
            self._fail(rid, f"{error.code().name}: {error.details()}")
        else:
            self._fail(rid, f"{type(error).__name__}: {error}")


def _streamed_kind(meta: TransferMeta) -> ChecksumKind:
    """A layer nobody hashed yet is hashed chunk by chunk as it is cut (xxh3's streaming API)."""
    return ChecksumKind.XXH3_64 if meta.checksum else ChecksumKind.NONE
