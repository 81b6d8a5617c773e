"""A node's Prometheus metrics, served by prometheus_client's HTTP server on `--metrics-port`.

Three sources: the engine loop reports each step and each request's outputs (`EngineObserver`:
TTFT, TPOT, ITL, end to end, step time, tokens); the interceptor counts calls and their failures
by code, the workers report the KV bytes and seconds of transfers (`kv_sent`, `kv_received`); gauges (KV blocks, queue, batch) are read from
the engine's stats at scrape time, a decode node's checksum failures from its KV receiver. README "Metrics" lists every name. The same interceptor puts
each call's request id in the log context (splitserve/rpc/logs.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import grpc
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from splitserve.engine import RequestOutput
from splitserve.rpc.logs import request_id
from splitserve.runtime.engine_loop import EngineLoop

PREFIX = "splitserve"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5,
                   5.0, 10.0, 20.0, 40.0, 60.0)
BYTES_BUCKETS = tuple(float(1 << k) for k in range(10, 34, 2))  # 1 KiB .. 8 GiB
STATS_TIMEOUT_S = 5.0
LOGGED_CALLS = ("Prefill", "Decode", "Generate")  # one INFO line per request phase; the rest at DEBUG
log = logging.getLogger(__name__)


class _EngineGauges:
    """KV blocks, queue depth and batch from `engine.stats()`, fetched on the engine thread per scrape."""

    def __init__(self, engine_loop: EngineLoop):
        self.engine_loop = engine_loop

    def collect(self):
        try:
            s = self.engine_loop.call(lambda engine: engine.stats()).result(STATS_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a stopped or stuck engine: no gauges this scrape
            return
        used_ratio = s.num_used_blocks / s.num_total_blocks if s.num_total_blocks else 0.0
        for name, doc, value in (
                ("kv_blocks_used", "KV blocks in use (running, held for a transfer, or reserved)", s.num_used_blocks),
                ("kv_blocks_free", "KV blocks free (cached prefixes included: they are evictable)", s.num_free_blocks),
                ("kv_blocks_total", "KV blocks in the pool", s.num_total_blocks),
                ("kv_blocks_used_ratio", "kv_blocks_used / kv_blocks_total", used_ratio),
                ("requests_waiting", "requests queued for the engine (queue depth)", s.num_waiting),
                ("requests_running", "requests in the running batch", s.num_running),
                ("pending_prefill_tokens", "prompt tokens admitted and not yet computed", s.num_pending_prefill_tokens),
                ("kv_reservations", "decode: reservations waiting for their KV", s.num_reserved)):
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
            family.add_metric([], float(value))
            yield family
        yield from _lora_gauges(s)
        yield from _speculation_counters(s)


def _speculation_counters(s):
    """--speculative-config: drafts checked and drafts kept (vLLM's spec_decode_num_draft/accepted_tokens)."""
    for name, doc, value in (("spec_decode_draft_tokens", "speculative drafts checked", s.spec_draft_tokens),
                             ("spec_decode_accepted_tokens", "speculative drafts kept", s.spec_accepted_tokens)):
        family = CounterMetricFamily(f"{PREFIX}_{name}", doc)
        family.add_metric([], float(value))
        yield family


def _lora_gauges(s):
    """Per LoRA adapter: its requests waiting and running here (vLLM's lora_requests_info, one series each)."""
    loaded = GaugeMetricFamily(f"{PREFIX}_lora_adapters_loaded", "LoRA adapters requests may name here")
    loaded.add_metric([], float(len(s.lora_adapters)))
    yield loaded
    for column, (name, doc) in enumerate((("waiting", "requests of the LoRA adapter queued for the engine"),
                                          ("running", "requests of the LoRA adapter in the running batch"))):
        family = GaugeMetricFamily(f"{PREFIX}_lora_requests_{name}", doc, labels=["adapter"])
        for row in s.lora_requests:
            family.add_metric([row[0]], float(row[1 + column]))
        yield family


class _ChecksumFailures:
    """Decode nodes: the KV receiver's count of transfers failed on a checksum mismatch, read per scrape."""

    def __init__(self, receiver):
        self.receiver = receiver

    def collect(self):
        family = CounterMetricFamily(f"{PREFIX}_kv_transfer_checksum_failures",
                                     "KV transfers failed because a layer's bytes did not match the sender's checksum")
        family.add_metric([], float(self.receiver.num_checksum_failures))
        yield family


class NodeMetrics:
    def __init__(self, role: str):
        self.role = role
        self.registry = r = CollectorRegistry()
        hist = lambda name, doc, **kw: Histogram(f"{PREFIX}_{name}", doc, buckets=LATENCY_BUCKETS, registry=r, **kw)
        self.ttft = hist("time_to_first_token_seconds", "admission to the request's first output token on this node")
        self.tpot = hist("time_per_output_token_seconds", "per request: (last token - first token) / (tokens - 1)")
        self.itl = hist("inter_token_latency_seconds", "time between successive output tokens of a request")
        self.e2e = hist("e2e_request_latency_seconds", "admission to the request's end on this node")
        self.step = hist("engine_step_seconds", "duration of one engine step (one batch)")
        self.transfer_s = hist("kv_transfer_seconds", "KV transfer time per request: send = prefill done to transfer "
                               "confirmed, receive = waiting for the KV before decoding", labelnames=["direction"])
        self.transfer_bytes = Counter(f"{PREFIX}_kv_transfer_bytes", "KV bytes sent or received", ["direction"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "output tokens produced", registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "finished engine requests by finish reason", ["reason"], registry=r)
        self.rpcs = Counter(f"{PREFIX}_rpcs", "node calls received, by method", ["method"], registry=r)
        self.rpc_errors = Counter(f"{PREFIX}_rpc_errors", "node calls failed, by method and gRPC status code",
                                  ["method", "code"], registry=r)

    def watch_engine(self, engine_loop: EngineLoop) -> None:
        """Reads the engine's gauges (KV blocks, queue, batch) at each scrape; its KV cache's settings as labels of
        `splitserve_cache_config_info` (vLLM's `cache_config_info`), which is 1."""
        self.registry.register(_EngineGauges(engine_loop))
        engine = engine_loop.engine
        info = Gauge(f"{PREFIX}_cache_config_info", "the node's KV cache: block size, dtype, blocks, prefix caching",
                     ["block_size", "cache_dtype", "num_blocks", "enable_prefix_caching"], registry=self.registry)
        info.labels(str(engine.config.block_size), engine.config.kv_dtype, str(engine.pool.num_blocks),
                    str(engine.config.enable_prefix_caching).lower()).set(1)

    def watch_kv_receiver(self, receiver) -> None:
        """Decode nodes: `splitserve_kv_transfer_checksum_failures_total` from receiver.num_checksum_failures."""
        self.registry.register(_ChecksumFailures(receiver))

    def kv_sent(self, num_bytes: int, seconds: float) -> None:
        self.transfer_bytes.labels("send").inc(num_bytes)
        self.transfer_s.labels("send").observe(seconds)

    def kv_received(self, num_bytes: int, seconds: float) -> None:
        self.transfer_bytes.labels("receive").inc(num_bytes)
        self.transfer_s.labels("receive").observe(seconds)

    def serve(self, host: str, port: int) -> str:
        """Starts the /metrics HTTP server (a daemon thread): off for port 0, any free port for -1.
        Returns 'host:port' ('' when off)."""
        if port == 0:
            return ""
        server, _ = start_http_server(max(port, 0), addr=host, registry=self.registry)
        return f"{host}:{server.server_port}"


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Counts the Node service's calls and failures by status code; sets the log request id."""

    def __init__(self, metrics: NodeMetrics, service: str):
        self.metrics, self.prefix = metrics, f"/{service}/"

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        method = details.method[len(self.prefix):]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream),
                                                        handler.request_deserializer, handler.response_serializer)
        return handler

    def _unary(self, method: str, behavior: Callable):
        async def call(request: Message, context: grpc.aio.ServicerContext):
            start = self._start(method, request)
            try:
                reply = await behavior(request, context)
            except BaseException as exc:
                self._failed(method, context, exc)
                raise
            self._done(method, start)
            return reply
        return call

    def _stream(self, method: str, behavior: Callable):
        async def call(request: Message, context: grpc.aio.ServicerContext):
            start = self._start(method, request)
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                self._failed(method, context, exc)
                raise
            self._done(method, start)
        return call

    def _start(self, method: str, request: Message) -> float:
        request_id.set(getattr(request, "request_id", ""))
        self.metrics.rpcs.labels(method).inc()
        return time.monotonic()

    def _done(self, method: str, start: float) -> None:
        log.log(logging.INFO if method in LOGGED_CALLS else logging.DEBUG, "%s done", method,
                extra={"seconds": round(time.monotonic() - start, 6)})

    def _failed(self, method: str, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            code = _status_name(context.code())
        else:
            # the caller closed the stream (cancelled, or went away after the final message)
            code = "CANCELLED" if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) else "UNKNOWN"
        self.metrics.rpc_errors.labels(method, code).inc()
        log.warning("%s failed: %s", method, code, exc_info=code == "UNKNOWN")


def _status_name(code: grpc.StatusCode | int) -> str:
    """grpc.aio may report the code as a StatusCode or as its integer value."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")


@dataclass
class _Timing:
    admitted: float
    first: float = 0.0
    last: float = 0.0
    num_tokens: int = 0  # produced on this node


class EngineObserver:
    """The engine loop's StepObserver: `on_admit` / `on_drop` from any thread, `on_step` on the engine thread."""

    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics
        self._lock = threading.Lock()
        self._timings: dict[str, _Timing] = {}

    def on_admit(self, rid: str) -> None:
        with self._lock:
            self._timings[rid] = _Timing(time.monotonic())

    def on_drop(self, rid: str) -> None:
        with self._lock:
            self._timings.pop(rid, None)

    def on_step(self, seconds: float, outputs: list[RequestOutput]) -> None:
        self.metrics.step.observe(seconds)
        now = time.monotonic()
        for out in outputs:
            with self._lock:
                t = self._timings.pop(out.request_id, None) if out.finished else self._timings.get(out.request_id)
            if t is not None:
                self._observe(out, t, now)

    def _observe(self, out: RequestOutput, t: _Timing, now: float) -> None:
        m, n = self.metrics, len(out.new_token_ids)
        if n:
            m.generation_tokens.inc(n)
            if t.num_tokens == 0:
                t.first = now
                m.ttft.observe(now - t.admitted)
            else:
                m.itl.observe(now - t.last)
            t.last, t.num_tokens = now, t.num_tokens + n
        if out.finished:
            m.requests.labels(out.finish_reason or "").inc()
            m.prompt_tokens.inc(out.num_prompt_tokens)
            m.e2e.observe(now - t.admitted)
            if t.num_tokens > 1:
                m.tpot.observe((t.last - t.first) / (t.num_tokens - 1))
